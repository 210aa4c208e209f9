//! Write versions: a hybrid logical clock packed in a `u64`.
//!
//! ```text
//! bits 63..22  milliseconds since the Unix epoch (42 bits: until year 2109)
//! bits 21..12  logical counter (1,024 writes per millisecond, a million a
//!              second, before borrowing from the next millisecond)
//! bits 11..0   the stamping node's id, drawn at random at start (orders
//!              writes of several orchestrators stamped in the same
//!              millisecond)
//! ```
//!
//! With 4,096 ids, two of `n` orchestrators share one with probability about
//! n(n-1)/8192: 0.07% for 3, 0.5% for 6, 1.1% for 10. Sharing one matters
//! only for two writes of one key stamped in the same millisecond with the
//! same counter by the two of them, each seen by only one partner (the
//! store then orders them by their bytes, but digests, which leave content
//! out, do not see the difference).
//!
//! Versions only grow on one node, even if the wall clock steps back, and a
//! node that sees a newer version (`observe`) moves its clock past it, so a
//! write that causally follows another always gets a larger version. A
//! version more than [`MAX_AHEAD`] ahead of this host's wall clock is not
//! plausible (a broken clock, or a peer writing `u64::MAX` to make a key
//! immortal): workers refuse writes carrying one, and no clock observes
//! one. Replicas
//! keep the entry with the largest version (last writer wins); equal versions
//! from different nodes cannot occur unless two nodes share an id, and the
//! store breaks even that tie deterministically.

use std::sync::atomic::{AtomicU64, Ordering};

const NODE_BITS: u32 = 12;
const LOGICAL_BITS: u32 = 10;
const PHYSICAL_SHIFT: u32 = NODE_BITS + LOGICAL_BITS;
const NODE_MASK: u64 = (1 << NODE_BITS) - 1;

/// How far ahead of this host's wall clock a version may be: far more than
/// any working clock's skew (an orchestrator 10 s off keeps working), far
/// less than forever.
pub const MAX_AHEAD: std::time::Duration = std::time::Duration::from_secs(600);

/// Whether `version` is no more than [`MAX_AHEAD`] ahead of this host's
/// wall clock.
pub fn plausible(version: u64) -> bool {
    millis(version) <= wall_ms().saturating_add(MAX_AHEAD.as_millis() as u64)
}

/// A hybrid logical clock owned by one node.
#[derive(Debug)]
pub struct Clock {
    node: u64,
    wall: crate::sys::WallClock,
    /// The last version handed out, node bits cleared.
    last: AtomicU64,
}

impl Clock {
    pub fn new(node: u16) -> Clock {
        Clock {
            node: u64::from(node) & NODE_MASK,
            wall: crate::sys::WallClock::new(),
            last: AtomicU64::new(0),
        }
    }

    /// A clock with a node id drawn at random.
    pub fn with_random_node() -> Clock {
        Clock::new(crate::sys::random_u64() as u16)
    }

    pub fn node(&self) -> u16 {
        self.node as u16
    }

    /// A version larger than any this clock handed out or observed.
    pub fn next(&self) -> u64 {
        let physical = self.wall.now_ms() << PHYSICAL_SHIFT;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let candidate = physical.max(last + (1 << NODE_BITS));
            match self.last.compare_exchange_weak(
                last,
                candidate,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return candidate | self.node,
                Err(actual) => last = actual,
            }
        }
    }

    /// Moves the clock past a version seen from elsewhere, unless it is
    /// not [`plausible`].
    pub fn observe(&self, version: u64) {
        if plausible(version) {
            self.last.fetch_max(version & !NODE_MASK, Ordering::Relaxed);
        }
    }
}

/// The version right after `version` from the same node (one logical tick
/// later): what an `expire` gives the entry it changes. It stays in that
/// node's id space, so it never equals a version another node stamps.
pub fn after(version: u64) -> u64 {
    version.saturating_add(1 << NODE_BITS)
}

/// The id of the node that stamped `version`.
pub fn node_of(version: u64) -> u16 {
    (version & NODE_MASK) as u16
}

/// Milliseconds since the Unix epoch encoded in a version.
pub fn millis(version: u64) -> u64 {
    version >> PHYSICAL_SHIFT
}

use crate::sys::wall_ms;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_grow_and_carry_the_node() {
        let clock = Clock::new(42);
        let mut prev = 0;
        for _ in 0..10_000 {
            let v = clock.next();
            assert!(v > prev);
            assert_eq!(v & NODE_MASK, 42);
            prev = v;
        }
        let now = wall_ms();
        assert!(millis(prev) >= now.saturating_sub(5_000) && millis(prev) <= now + 5_000);
    }

    #[test]
    fn the_version_after_keeps_its_node_and_precedes_the_next_tick() {
        let (a, b) = (Clock::new(7), Clock::new(8));
        let v = a.next();
        let w = b.next();
        let next = after(v);
        assert_eq!(next & NODE_MASK, 7, "still node 7's");
        assert!(next > v);
        // Another node's version of the same millisecond and counter is
        // never equal to it.
        assert_ne!(next, w);
        assert_ne!(next, v + 1, "not in node 8's id space");
        // A clock that observed it stamps above it.
        b.observe(next);
        assert!(b.next() > next);
    }

    #[test]
    fn observing_a_future_version_moves_past_it() {
        let a = Clock::new(1);
        let b = Clock::new(2);
        let future = (wall_ms() + 60_000) << PHYSICAL_SHIFT | 1;
        a.observe(future);
        let v = a.next();
        assert!(v > future);
        b.observe(v);
        assert!(b.next() > v);
    }

    #[test]
    fn a_version_far_in_the_future_is_not_plausible_and_not_observed() {
        let clock = Clock::new(3);
        let soon = (wall_ms() + 10_000) << PHYSICAL_SHIFT;
        assert!(plausible(soon));
        for absurd in [u64::MAX, (wall_ms() + 3_600_000) << PHYSICAL_SHIFT] {
            assert!(!plausible(absurd));
            clock.observe(absurd);
            assert!(
                millis(clock.next()) < wall_ms() + 60_000,
                "the clock jumped"
            );
        }
    }
}
