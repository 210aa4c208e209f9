//! Executing a batch of pipelined commands: how many are taken together,
//! and which of them may run at once without reordering what a client
//! can observe.

use super::conn::WRITE_HIGH_WATER_BYTES;
use crate::command::{self, Keyspace, Route};
use crate::metrics::{ServerMetrics, Tally};
use crate::protocol::{Command, Op, Reply};
use tokio::time::Instant;
/// How many requests of a pipeline are executed together (see
/// [`execute`]): replies are held until their batch is done, so the batch
/// follows the size of the replies, keeping about [`WRITE_HIGH_WATER_BYTES`]
/// of them in memory per connection. A connection starts with
/// [`Window::FIRST`] and moves between 1 and [`Window::MAX`].
pub(super) struct Window(usize);

impl Window {
    const FIRST: usize = 1;
    const MAX: usize = 256;

    pub(super) fn new() -> Window {
        Window(Window::FIRST)
    }

    /// Requests to take into the next batch.
    pub(super) fn size(&self) -> usize {
        self.0
    }

    /// Sizes the next batch after one whose replies took `bytes` each.
    pub(super) fn observe<R>(&mut self, replies: &[R], bytes: impl Fn(&R) -> usize) {
        if replies.is_empty() {
            return;
        }
        let bytes: usize = replies.iter().map(bytes).sum();
        let average = (bytes / replies.len()).max(1);
        let fits = (WRITE_HIGH_WATER_BYTES / average).clamp(1, Window::MAX);
        // Grow gradually, shrink at once.
        self.0 = fits.min(self.0.saturating_mul(2));
    }
}

/// About what a reply takes in memory and on the wire.
pub(super) fn reply_bytes(reply: &Reply) -> usize {
    16 + match reply {
        Reply::Value(v) => v.len(),
        Reply::Values(values) => values.iter().flatten().map(|v| v.len() + 16).sum(),
        Reply::Error(e) => e.message.len(),
        Reply::Array(items) => items.iter().map(reply_bytes).sum(),
        Reply::Map(pairs) => pairs.iter().map(|(_, item)| 16 + reply_bytes(item)).sum(),
        _ => 0,
    }
}

/// Executes `commands` (leaving it empty) and appends their replies to
/// `replies` in order.
///
/// A keyspace whose commands wait on the network ([`Keyspace::CONCURRENT`],
/// the orchestrator) runs them concurrently, so a pipelining client keeps
/// many requests in flight to the workers, about [`Keyspace::FAN_OUT`]
/// keys at most (a segment ends there). Order is kept where it can be
/// observed: a command that touches a key an earlier command of the batch
/// touches, either of them writing, waits until the earlier ones are done.
pub(super) async fn execute<K: Keyspace>(
    service: &K,
    clock: &mut Instant,
    commands: &mut Vec<Command>,
    replies: &mut Vec<Reply>,
    metrics: &ServerMetrics,
    tally: &mut Tally,
) {
    replies.reserve(commands.len());
    if !K::CONCURRENT || commands.len() == 1 {
        // One clock reading per command: each ends where the next starts.
        for command in commands.drain(..) {
            let op = command::spec(&command).op;
            let reply = command::run(service, command).await;
            let ended = Instant::now();
            tally.observe(metrics, op, reply.outcome(), ended - *clock);
            *clock = ended;
            replies.push(reply);
        }
        return;
    }
    // Keys are told apart by a 64-bit hash of their bytes (seeded per
    // batch, so clients cannot aim collisions): two keys with the same hash
    // only keep an order they did not need, never lose one.
    let hasher = foldhash::fast::RandomState::default();
    let mut hashes: Vec<u64> = Vec::new();
    // Sized once for the batch and reused by every segment.
    let mut touched: hashbrown::HashMap<u64, bool, PassThrough> =
        hashbrown::HashMap::with_capacity_and_hasher(commands.len(), PassThrough(0));
    let mut commands = commands.drain(..).peekable();
    while commands.peek().is_some() {
        // One segment: commands that do not conflict with each other.
        // Keys touched so far (by hash), and whether one of the commands
        // writes it.
        touched.clear();
        let mut segment_writes = false;
        // A command about the whole store (DBSIZE, INFO) is in the segment.
        let mut segment_whole = false;
        let mut segment = Vec::new();
        // Keys the segment's commands touch.
        let mut keys = 0usize;
        // Their metrics labels, read with the rest of their specs.
        let mut ops = Vec::new();
        while let Some(next) = commands.peek() {
            let spec = command::spec(next);
            let (writes, op) = (spec.writes, spec.op);
            hashes.clear();
            spec.route
                .for_each_key(|k| hashes.push(std::hash::BuildHasher::hash_one(&hasher, k)));
            // A command about the whole store sees every write before it,
            // and a write after it waits for it.
            let whole = matches!(spec.route, Route::AllPairs);
            let conflict = (whole && segment_writes)
                || (writes && segment_whole)
                || hashes
                    .iter()
                    .any(|h| touched.get(h).is_some_and(|&w| w || writes));
            // One connection keeps about FAN_OUT keys in flight (one
            // multi-key command runs FAN_OUT at a time itself): a pipeline
            // of multi-key commands queues no more at the workers' links
            // than one of them, so other connections' requests are not
            // queued behind all of it.
            let crowded = keys + hashes.len().max(1) > K::FAN_OUT;
            if (conflict || crowded) && !segment.is_empty() {
                break;
            }
            keys += hashes.len().max(1);
            segment_writes |= writes;
            segment_whole |= whole;
            for &h in &hashes {
                *touched.entry(h).or_insert(false) |= writes;
            }
            if let Some(command) = commands.next() {
                segment.push(command);
                ops.push(op);
            }
        }
        replies.extend(run_together(service, segment, &ops, metrics, tally).await);
    }
}

/// A hasher for keys that are hashes already.
#[derive(Default, Clone, Copy)]
struct PassThrough(u64);

impl std::hash::Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl std::hash::BuildHasher for PassThrough {
    type Hasher = PassThrough;

    fn build_hasher(&self) -> PassThrough {
        PassThrough(0)
    }
}

/// Runs `commands` (labelled `ops`) concurrently; replies in order.
async fn run_together<K: Keyspace>(
    service: &K,
    commands: Vec<Command>,
    ops: &[Op],
    metrics: &ServerMetrics,
    tally: &mut Tally,
) -> Vec<Reply> {
    let started = Instant::now();
    let calls = commands
        .into_iter()
        .map(|c| command::run(service, c))
        .collect();
    crate::join::join_all_then(calls, |i, reply, now| {
        tally.observe(metrics, ops[i], reply.outcome(), now - started);
    })
    .await
}
