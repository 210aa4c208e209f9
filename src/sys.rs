//! Where rcache touches the world outside its own logic: sockets, the wall
//! clock and randomness. Everything else reaches them through here, so the
//! `simulation` feature can swap them for turmoil's simulated network,
//! simulated time and a seeded generator, and a whole cluster then runs
//! deterministically in one thread (`tests/simulation.rs`): a failing seed
//! replays exactly. For the same reason every `select!` in the daemons is
//! `biased`: it polls its branches in a fixed order.

#[cfg(not(feature = "simulation"))]
pub use tokio::net::{TcpListener, TcpStream};
#[cfg(feature = "simulation")]
pub use turmoil::net::{TcpListener, TcpStream};

/// The hasher of the worker's store tables: seeded per process, so clients
/// cannot aim collisions (fixed by the seed in a simulation).
#[cfg(not(feature = "simulation"))]
pub type TableHasher = foldhash::fast::RandomState;
#[cfg(feature = "simulation")]
pub type TableHasher = foldhash::fast::FixedState;

pub fn table_hasher() -> TableHasher {
    #[cfg(not(feature = "simulation"))]
    return foldhash::fast::RandomState::default();
    #[cfg(feature = "simulation")]
    return foldhash::fast::FixedState::with_seed(random_u64());
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn wall_ms() -> u64 {
    (wall_us() / 1000) as u64
}

/// Microseconds since the Unix epoch (0 if the clock is before it).
pub fn wall_us() -> u128 {
    #[cfg(not(feature = "simulation"))]
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok();
    #[cfg(feature = "simulation")]
    let since_epoch = turmoil::since_epoch();
    since_epoch.map_or(0, |d| d.as_micros())
}

/// The wall clock as one node reads it for its versions. In a simulation
/// the test can skew one node's clock and step it while it runs
/// ([`sim::skew_next_clock`]).
#[derive(Debug, Default)]
pub struct WallClock {
    #[cfg(feature = "simulation")]
    skew_ms: Option<std::sync::Arc<std::sync::atomic::AtomicI64>>,
}

impl WallClock {
    pub fn new() -> WallClock {
        WallClock {
            #[cfg(feature = "simulation")]
            skew_ms: sim::take_skew(),
        }
    }

    /// Milliseconds since the Unix epoch on this node's clock.
    pub fn now_ms(&self) -> u64 {
        #[cfg(feature = "simulation")]
        if let Some(skew) = &self.skew_ms {
            return wall_ms()
                .saturating_add_signed(skew.load(std::sync::atomic::Ordering::Relaxed));
        }
        wall_ms()
    }
}

/// The machine's memory (`MemTotal` of `/proc/meminfo`), in bytes.
pub fn physical_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// A random number: from the process's randomness, or from the seed in a
/// simulation.
pub fn random_u64() -> u64 {
    #[cfg(not(feature = "simulation"))]
    {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.finish()
    }
    #[cfg(feature = "simulation")]
    {
        sim::next()
    }
}

#[cfg(feature = "simulation")]
pub mod sim {
    //! The simulation's seeded generator (SplitMix64). Hosts run one after
    //! another on the simulating thread, so the order of draws, and every
    //! number, is fixed by the seed; each thread has its own generator, so
    //! simulations on other threads do not disturb it.
    use std::cell::{Cell, RefCell};
    use std::sync::atomic::AtomicI64;
    use std::sync::Arc;

    thread_local! {
        static STATE: Cell<u64> = const { Cell::new(0) };
        static SKEW: RefCell<Option<Arc<AtomicI64>>> = const { RefCell::new(None) };
    }

    /// The next [`super::WallClock`] made on this thread reads the
    /// simulated wall clock plus `skew` milliseconds, which the test may
    /// change while it runs (a clock stepped back). A host sets it right
    /// before it builds its daemon.
    pub fn skew_next_clock(skew: Arc<AtomicI64>) {
        SKEW.with(|s| *s.borrow_mut() = Some(skew));
    }

    pub(crate) fn take_skew() -> Option<Arc<AtomicI64>> {
        SKEW.with(|s| s.borrow_mut().take())
    }

    pub fn seed(seed: u64) {
        STATE.with(|s| s.set(seed));
    }

    pub fn next() -> u64 {
        STATE.with(|s| {
            let mut z = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
            s.set(z);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        })
    }
}

/// Names the address a bind failed on, and says so when the port is taken.
pub fn bind_error(address: &str, e: std::io::Error) -> std::io::Error {
    let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
        ": the port is taken by another process"
    } else {
        ""
    };
    std::io::Error::new(e.kind(), format!("cannot listen on {address}: {e}{hint}"))
}

/// Whether the peer has closed `stream` (or it failed), as the socket says
/// now: one non-blocking peek, not the runtime's readiness, which for a
/// connection nobody polls may not yet show a close that has arrived.
/// `false` when it is open, or has bytes waiting (read them to know more).
#[cfg(not(feature = "simulation"))]
pub fn peer_closed(stream: &TcpStream) -> bool {
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
    match socket2::SockRef::from(stream).peek(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// In a simulation the runtime's readiness is the socket's.
#[cfg(feature = "simulation")]
pub fn peer_closed(_stream: &TcpStream) -> bool {
    false
}
