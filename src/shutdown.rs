//! The shutdown signal every task waits on: one trigger, fired once (by
//! SIGTERM, or by a test), seen by every clone of [`Shutdown`].

use tokio::sync::watch;

/// Fires once; every clone sees it.
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

pub fn shutdown_channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger(tx), Shutdown(rx))
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }

    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}

impl Shutdown {
    /// Resolves once shutdown has begun (or its trigger is gone).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|&stop| stop).await;
    }

    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }
}
