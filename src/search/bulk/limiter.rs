//! The concurrency limiter of the bulk writer: grants permits for requests
//! in flight, up to a limit that sustained throttling halves (down to one)
//! and a run of clean answers raises by one again (AIMD). Sustained means
//! two throttled answers among the last five: a lone 429 is noise, but a
//! node that turns away one answer in eight was, with a rule of two in a
//! row, never relieved at all (measured on the throttled test node). The rule itself
//! (`LimitState::on_answer`) is a pure function of the answers.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tracing::{info, warn};

/// Throttled answers among the last [`THROTTLED_WINDOW`] that lower the
/// concurrency.
const THROTTLED_TO_DECREASE: u32 = 2;
/// How many of the latest answers are looked at.
const THROTTLED_WINDOW: u32 = 5;
/// Clean answers in a row that raise the concurrency by one.
const CLEAN_STREAK_TO_INCREASE: u32 = 10;

/// Grants permits for requests in flight, up to a limit that throttling
/// lowers and clean answers raise.
pub(super) struct Limiter {
    state: Mutex<LimitState>,
    notify: Notify,
}

#[derive(Clone, Debug, PartialEq)]
struct LimitState {
    max: usize,
    limit: usize,
    in_flight: usize,
    /// Bumped at each decrease; a permit remembers the epoch it was granted
    /// in, so that answers to requests sent before a decrease do not count
    /// towards the next one.
    epoch: u64,
    /// The latest answers of this epoch, newest in the lowest bit (1 =
    /// throttled), [`THROTTLED_WINDOW`] of them.
    recent: u32,
    clean_streak: u32,
    min_seen: usize,
    decreases: u64,
    increases: u64,
}

/// What one answer changed.
#[derive(Debug, PartialEq, Eq)]
enum Adjustment {
    None,
    Decreased(usize),
    Increased(usize),
}

impl LimitState {
    fn new(max: usize) -> Self {
        Self {
            max,
            limit: max,
            in_flight: 0,
            epoch: 0,
            recent: 0,
            clean_streak: 0,
            min_seen: max,
            decreases: 0,
            increases: 0,
        }
    }

    /// The AIMD rule, applied to one answer of a request granted in `epoch`.
    fn on_answer(&mut self, epoch: u64, throttled: bool) -> Adjustment {
        let window = (1u32 << THROTTLED_WINDOW) - 1;
        if throttled {
            self.clean_streak = 0;
            if epoch < self.epoch {
                return Adjustment::None;
            }
            self.recent = ((self.recent << 1) | 1) & window;
            if self.recent.count_ones() >= THROTTLED_TO_DECREASE && self.limit > 1 {
                self.limit = (self.limit / 2).max(1);
                self.min_seen = self.min_seen.min(self.limit);
                self.epoch += 1;
                self.recent = 0;
                self.decreases += 1;
                return Adjustment::Decreased(self.limit);
            }
        } else {
            self.recent = (self.recent << 1) & window;
            self.clean_streak += 1;
            if self.clean_streak >= CLEAN_STREAK_TO_INCREASE && self.limit < self.max {
                self.limit += 1;
                self.clean_streak = 0;
                self.increases += 1;
                return Adjustment::Increased(self.limit);
            }
        }
        Adjustment::None
    }
}

pub(super) struct Permit {
    limiter: Arc<Limiter>,
    epoch: u64,
}

impl Permit {
    pub(super) fn record(&self, throttled: bool) {
        let adjustment = {
            let mut state = self.limiter.lock();
            state.on_answer(self.epoch, throttled)
        };
        match adjustment {
            Adjustment::Decreased(limit) => {
                warn!(
                    concurrency = limit,
                    "OpenSearch is throttling bulk requests; lowering concurrency."
                )
            }
            Adjustment::Increased(limit) => {
                info!(
                    concurrency = limit,
                    "Bulk answers are clean again; raising concurrency."
                );
                self.limiter.notify.notify_one();
            }
            Adjustment::None => {}
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limiter.lock().in_flight -= 1;
        self.limiter.notify.notify_one();
    }
}

pub(super) struct LimiterFigures {
    pub limit: usize,
    pub min_seen: usize,
    pub decreases: u64,
    pub increases: u64,
}

impl Limiter {
    pub(super) fn new(max: usize) -> Self {
        Self {
            state: Mutex::new(LimitState::new(max)),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LimitState> {
        // The state stays consistent even if a holder panicked.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until fewer requests than the limit are in flight. Only the
    /// dispatcher waits here, so `notify_one` (which stores a wake-up when
    /// nobody waits) never loses one.
    pub(super) async fn acquire(self: &Arc<Self>) -> Permit {
        loop {
            {
                let mut state = self.lock();
                if state.in_flight < state.limit {
                    state.in_flight += 1;
                    return Permit {
                        limiter: self.clone(),
                        epoch: state.epoch,
                    };
                }
            }
            self.notify.notified().await;
        }
    }

    pub(super) fn figures(&self) -> LimiterFigures {
        let state = self.lock();
        LimiterFigures {
            limit: state.limit,
            min_seen: state.min_seen,
            decreases: state.decreases,
            increases: state.increases,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sustained_throttling_halves_the_limit_down_to_one_and_clean_answers_raise_it() {
        let mut s = LimitState::new(8);
        assert_eq!(s.on_answer(0, true), Adjustment::None);
        assert_eq!(s.on_answer(0, true), Adjustment::Decreased(4));
        // Answers to requests granted before the decrease are stale.
        assert_eq!(s.on_answer(0, true), Adjustment::None);
        assert_eq!(s.on_answer(0, true), Adjustment::None);
        assert_eq!(s.on_answer(1, true), Adjustment::None);
        assert_eq!(s.on_answer(1, true), Adjustment::Decreased(2));
        assert_eq!(s.on_answer(2, true), Adjustment::None);
        assert_eq!(s.on_answer(2, true), Adjustment::Decreased(1));
        assert_eq!(s.on_answer(3, true), Adjustment::None);
        assert_eq!(s.on_answer(3, true), Adjustment::None);
        assert_eq!(s.limit, 1);
        assert_eq!(s.min_seen, 1);
        for _ in 0..CLEAN_STREAK_TO_INCREASE - 1 {
            assert_eq!(s.on_answer(3, false), Adjustment::None);
        }
        assert_eq!(s.on_answer(3, false), Adjustment::Increased(2));
    }

    #[test]
    fn a_lone_throttled_answer_among_clean_ones_changes_nothing() {
        let mut s = LimitState::new(4);
        for _ in 0..5 {
            assert_eq!(s.on_answer(0, true), Adjustment::None);
            for _ in 0..THROTTLED_WINDOW - 1 {
                assert_eq!(s.on_answer(0, false), Adjustment::None);
            }
        }
        assert_eq!(s.limit, 4);
    }

    #[test]
    fn two_throttled_answers_among_the_last_five_lower_the_limit() {
        let mut s = LimitState::new(4);
        assert_eq!(s.on_answer(0, true), Adjustment::None);
        assert_eq!(s.on_answer(0, false), Adjustment::None);
        assert_eq!(s.on_answer(0, false), Adjustment::None);
        assert_eq!(s.on_answer(0, true), Adjustment::Decreased(2));
    }

    #[tokio::test]
    async fn the_limiter_never_grants_more_than_the_limit() {
        let limiter = Arc::new(Limiter::new(2));
        let a = limiter.acquire().await;
        let _b = limiter.acquire().await;
        let waiting = tokio::spawn({
            let limiter = limiter.clone();
            async move { limiter.acquire().await.epoch }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(a);
        assert_eq!(waiting.await.unwrap(), 0);
    }
}
