//! What a live applier in this process is doing, for whoever started it:
//! whether it holds the live lease and how many of its sources (the TCS
//! update queue and the two change streams) are open. A change stream
//! opened without a stored position starts "from now", so a caller that
//! makes changes right after starting an applier waits for [`LiveStatus::wait_ready`].

use std::time::Duration;

use tokio::sync::watch;

/// A snapshot of the applier's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LiveState {
    /// It holds the live lease.
    pub active: bool,
    /// Sources open since it became active.
    pub sources_open: u8,
    /// Sources it opens: the update queue and its change streams.
    pub sources: u8,
}

impl LiveState {
    /// Active, with every source open.
    pub fn ready(&self) -> bool {
        self.active && self.sources_open >= self.sources
    }
}

/// Shared between an applier and its starter (cheap to clone).
#[derive(Clone, Debug)]
pub struct LiveStatus {
    state: watch::Sender<LiveState>,
}

impl Default for LiveStatus {
    fn default() -> Self {
        Self {
            state: watch::Sender::new(LiveState::default()),
        }
    }
}

impl LiveStatus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn now(&self) -> LiveState {
        *self.state.borrow()
    }

    /// Waits until the applier is active with every source open; `false`
    /// when `within` passed first.
    pub async fn wait_ready(&self, within: Duration) -> bool {
        let mut rx = self.state.subscribe();
        tokio::time::timeout(within, rx.wait_for(LiveState::ready))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    pub(crate) fn became_active(&self, sources: u8) {
        self.state.send_replace(LiveState {
            active: true,
            sources_open: 0,
            sources,
        });
    }

    pub(crate) fn became_inactive(&self) {
        self.state.send_replace(LiveState::default());
    }

    pub(crate) fn source_opened(&self) {
        self.state
            .send_modify(|s| s.sources_open = s.sources_open.saturating_add(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_means_active_with_every_source_open() {
        let status = LiveStatus::new();
        assert!(!status.wait_ready(Duration::from_millis(10)).await);
        status.became_active(3);
        status.source_opened();
        status.source_opened();
        assert!(!status.now().ready());
        let waiter = {
            let status = status.clone();
            tokio::spawn(async move { status.wait_ready(Duration::from_secs(5)).await })
        };
        status.source_opened();
        assert!(waiter.await.unwrap());
        status.became_inactive();
        assert_eq!(status.now(), LiveState::default());
    }
}
