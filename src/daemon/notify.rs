//! systemd's notification protocol (`sd_notify(3)`), through the sd-notify
//! crate: a datagram to `$NOTIFY_SOCKET` per state change. Without that
//! variable (not under systemd) every call does nothing.
//!
//! What rcache sends: `READY=1` once it serves (a worker: after its
//! refill), `STATUS=` every [`STATUS_INTERVAL`] (what it is doing),
//! `EXTEND_TIMEOUT_USEC=` while a refill runs (a long refill must not hit
//! the start timeout), `WATCHDOG=1` every half of `$WATCHDOG_USEC`,
//! `RELOADING=1` … `READY=1` around a reload, `STOPPING=1` at shutdown.

use crate::shutdown::Shutdown;
use sd_notify::NotifyState;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often `STATUS=` is refreshed.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(2);

/// How far each `EXTEND_TIMEOUT_USEC=` pushes the start timeout.
const EXTEND_BY: Duration = Duration::from_secs(30);

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "cannot notify systemd");
    }
}

/// Set once READY=1 went out: a reload before that (a worker still
/// refilling) must not tell systemd the start is over.
static READY_SENT: AtomicBool = AtomicBool::new(false);

pub fn ready(status: &str) {
    READY_SENT.store(true, Ordering::Relaxed);
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// The end of a reload: READY=1 again (systemd waits for it after
/// RELOADING=1), unless the daemon had not reported ready yet.
pub fn reloaded(status: &str) {
    if READY_SENT.load(Ordering::Relaxed) {
        ready(status);
    } else {
        self::status(status);
    }
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

pub fn reloading() {
    if !READY_SENT.load(Ordering::Relaxed) {
        return;
    }
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: finishing in-flight requests"),
    ]);
}

/// Starts sending `WATCHDOG=1` every half of `$WATCHDOG_USEC`, if set.
/// The task runs on the daemon's runtime, so a wedged runtime stops it
/// and systemd restarts the daemon.
pub fn spawn_watchdog(mut shutdown: Shutdown) {
    let Some(timeout) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (timeout / 2).max(Duration::from_millis(10));
    tracing::info!(?timeout, "systemd watchdog enabled");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.wait() => return,
                _ = tick.tick() => send(&[NotifyState::Watchdog]),
            }
        }
    });
}

/// Refreshes `STATUS=` from `line` until shutdown. While `line` reports a
/// refill in progress (`(text, true)`), the start timeout is extended.
pub fn spawn_status<F>(line: F, mut shutdown: Shutdown)
where
    F: Fn() -> (String, bool) + Send + 'static,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(STATUS_INTERVAL);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.wait() => return,
                _ = tick.tick() => {}
            }
            let (text, starting) = line();
            if starting {
                let usec = u32::try_from(EXTEND_BY.as_micros()).unwrap_or(u32::MAX);
                send(&[
                    NotifyState::Status(&text),
                    NotifyState::ExtendTimeoutUsec(usec),
                ]);
            } else {
                status(&text);
            }
        }
    });
}
