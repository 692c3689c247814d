//! A count of open things (HTTP connections, WebSocket sessions) that a graceful stop
//! waits for: [`Open::enter`] returns a guard that counts one until it is dropped, also when
//! the task holding it panics or is cut.

use tokio::sync::watch;

/// The number of open things; clones share the count.
#[derive(Clone)]
pub struct Open(watch::Sender<usize>);

impl Default for Open {
    fn default() -> Self {
        Open(watch::Sender::new(0))
    }
}

impl Open {
    /// How many are open now.
    pub fn count(&self) -> usize {
        *self.0.borrow()
    }

    /// Counts one more until the guard is dropped.
    pub fn enter(&self) -> OpenGuard {
        self.0.send_modify(|n| *n += 1);
        OpenGuard(self.clone())
    }

    /// Resolves once none is open.
    pub async fn wait_idle(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

/// One open thing, counted in its [`Open`] while this lives.
pub struct OpenGuard(Open);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0 .0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_idle_resolves_when_the_last_guard_drops() {
        let open = Open::default();
        let a = open.enter();
        let b = open.enter();
        assert_eq!(open.count(), 2);
        drop(a);
        let waiter = tokio::spawn({
            let open = open.clone();
            async move { open.wait_idle().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(b);
        waiter.await.unwrap();
        assert_eq!(open.count(), 0);
    }
}
