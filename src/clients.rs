//! The client connections a daemon has open, as `CLIENT LIST`, `CLIENT
//! INFO` and `CLIENT KILL` see them: one [`Registry`] per daemon, one
//! [`Client`] per connection from its first request to its close.
//!
//! A connection updates its own entry with relaxed atomics (the last
//! command, when it ran, how many ran); the registry's lock is taken only
//! when a connection opens or closes and when someone lists or kills.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The open client connections of one daemon.
#[derive(Debug, Default)]
pub struct Registry {
    next_id: AtomicU64,
    open: Mutex<BTreeMap<u64, Arc<Client>>>,
}

/// One client connection.
#[derive(Debug)]
pub struct Client {
    pub id: u64,
    /// The peer's address and the daemon's end (`None` when the socket
    /// could not tell, which a simulation's may not).
    pub addr: Option<SocketAddr>,
    pub laddr: Option<SocketAddr>,
    opened: Instant,
    /// Milliseconds from `opened` to the end of the last request.
    active_ms: AtomicU64,
    commands: AtomicU64,
    /// The last command's name, an index into the caller's name table
    /// (`u8::MAX`: none yet).
    last: AtomicU8,
    resp: AtomicU8,
    no_evict: AtomicBool,
    names: Mutex<Names>,
    killed: AtomicBool,
    kill: Notify,
}

/// What a client says about itself (`CLIENT SETNAME`, `CLIENT SETINFO`,
/// `HELLO … SETNAME`).
#[derive(Debug, Default, Clone)]
pub struct Names {
    pub name: String,
    pub lib_name: String,
    pub lib_ver: String,
}

/// Which connections a `CLIENT KILL` closes: all of its filters must hold.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KillFilter {
    pub id: Option<u64>,
    pub addr: Option<String>,
    pub laddr: Option<String>,
    /// Connections open at least this many seconds.
    pub max_age: Option<u64>,
    /// Spare the connection that asks (`SKIPME yes`, the default of the
    /// filter form).
    pub skip_me: bool,
    /// A filter no connection here passes (`TYPE replica`, another `USER`).
    pub nobody: bool,
}

impl Registry {
    /// Registers a new connection; it leaves the registry when the guard
    /// drops.
    pub fn open(
        self: &Arc<Registry>,
        addr: Option<SocketAddr>,
        laddr: Option<SocketAddr>,
    ) -> Registered {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let client = Arc::new(Client {
            id,
            addr,
            laddr,
            opened: Instant::now(),
            active_ms: AtomicU64::new(0),
            commands: AtomicU64::new(0),
            last: AtomicU8::new(u8::MAX),
            resp: AtomicU8::new(2),
            no_evict: AtomicBool::new(false),
            names: Mutex::new(Names::default()),
            killed: AtomicBool::new(false),
            kill: Notify::new(),
        });
        self.lock().insert(id, client.clone());
        Registered {
            registry: self.clone(),
            client,
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<Client>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The open connections, oldest first, or those of `ids`.
    pub fn list(&self, ids: Option<&[u64]>) -> Vec<Arc<Client>> {
        let open = self.lock();
        match ids {
            None => open.values().cloned().collect(),
            Some(ids) => ids.iter().filter_map(|id| open.get(id).cloned()).collect(),
        }
    }

    /// Closes the connections `filter` matches (`me` asks); how many.
    pub fn kill(&self, filter: &KillFilter, me: u64) -> usize {
        let open = self.lock();
        let mut killed = 0;
        for client in open.values() {
            if filter.matches(client, me) {
                client.killed.store(true, Ordering::Relaxed);
                client.kill.notify_one();
                killed += 1;
            }
        }
        killed
    }
}

impl KillFilter {
    fn matches(&self, client: &Client, me: u64) -> bool {
        let shown = |a: Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
        let spared = self.nobody || (self.skip_me && client.id == me);
        !spared
            && self.id.map_or(true, |id| id == client.id)
            && self
                .addr
                .as_ref()
                .map_or(true, |a| *a == shown(client.addr))
            && self
                .laddr
                .as_ref()
                .map_or(true, |a| *a == shown(client.laddr))
            && self
                .max_age
                .map_or(true, |age| client.opened.elapsed().as_secs() >= age)
    }
}

impl Client {
    /// Counts a command, `name` being its index in the caller's table.
    pub fn ran(&self, name: usize) {
        self.commands.fetch_add(1, Ordering::Relaxed);
        self.last
            .store(u8::try_from(name).unwrap_or(u8::MAX), Ordering::Relaxed);
    }

    /// The requests before `at` are done: the connection is idle from then.
    pub fn active_at(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.opened).as_millis();
        self.active_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub fn set_resp(&self, version: u8) {
        self.resp.store(version, Ordering::Relaxed);
    }

    pub fn set_no_evict(&self, on: bool) {
        self.no_evict.store(on, Ordering::Relaxed);
    }

    pub fn names(&self) -> Names {
        self.names.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn rename(&self, change: impl FnOnce(&mut Names)) {
        change(&mut self.names.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Relaxed)
    }

    /// Resolves once a `CLIENT KILL` matched this connection.
    pub async fn killed(&self) {
        while !self.is_killed() {
            self.kill.notified().await;
        }
    }

    /// The connection's line of `CLIENT LIST` (without the newline), in
    /// Redis's `name=value` form; `command_name` names the commands
    /// [`Client::ran`] counted.
    pub fn describe(&self, command_name: impl Fn(usize) -> Option<&'static str>) -> String {
        let names = self.names();
        let shown = |a: Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
        let idle_ms = (self.opened.elapsed().as_millis() as u64)
            .saturating_sub(self.active_ms.load(Ordering::Relaxed));
        let last = command_name(usize::from(self.last.load(Ordering::Relaxed))).unwrap_or("NULL");
        let flags = if self.no_evict.load(Ordering::Relaxed) {
            "e"
        } else {
            "N"
        };
        let mut line = String::new();
        let _ = write!(
            line,
            "id={} addr={} laddr={} name={} age={} idle={} flags={flags} db=0 sub=0 psub=0 \
             ssub=0 multi=-1 watch=0 tot-cmds={} cmd={last} user=default redir=-1 resp={} \
             lib-name={} lib-ver={}",
            self.id,
            shown(self.addr),
            shown(self.laddr),
            names.name,
            self.opened.elapsed().as_secs(),
            idle_ms / 1000,
            self.commands.load(Ordering::Relaxed),
            self.resp.load(Ordering::Relaxed),
            names.lib_name,
            names.lib_ver,
        );
        line
    }
}

/// A connection's entry while it is open.
#[derive(Debug)]
pub struct Registered {
    registry: Arc<Registry>,
    pub client: Arc<Client>,
}

impl Registered {
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.client.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_matches_every_filter_and_spares_the_asker() {
        let registry = Arc::new(Registry::default());
        let a: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:5002".parse().unwrap();
        let first = registry.open(Some(a), None);
        let second = registry.open(Some(b), None);
        assert_eq!(registry.list(None).len(), 2);
        let by_addr = KillFilter {
            addr: Some(a.to_string()),
            skip_me: true,
            ..KillFilter::default()
        };
        assert_eq!(
            registry.kill(&by_addr, first.client.id),
            0,
            "SKIPME spares it"
        );
        assert_eq!(registry.kill(&by_addr, second.client.id), 1);
        assert!(first.client.is_killed() && !second.client.is_killed());
        let by_id = KillFilter {
            id: Some(second.client.id),
            ..KillFilter::default()
        };
        assert_eq!(registry.kill(&by_id, first.client.id), 1);
        drop(first);
        assert_eq!(registry.list(None).len(), 1, "a closed connection leaves");
    }

    #[test]
    fn a_line_reports_what_the_connection_did() {
        let registry = Arc::new(Registry::default());
        let open = registry.open("127.0.0.1:5001".parse().ok(), None);
        open.client.ran(1);
        open.client.ran(1);
        open.client.rename(|n| n.name = "web".into());
        let line = open.client.describe(|i| ["get", "set"].get(i).copied());
        assert!(
            line.starts_with("id=1 addr=127.0.0.1:5001 laddr= name=web "),
            "{line}"
        );
        assert!(line.contains(" tot-cmds=2 cmd=set "), "{line}");
    }
}
