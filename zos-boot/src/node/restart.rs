//! The restart policy: a crashed VM is started again after a growing back-off, at most
//! `max_restarts` times within `window`; one more crash in the window marks it failed.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Limits of the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartLimits {
    /// Restarts allowed within `window`.
    pub max_restarts: usize,
    /// The sliding window.
    pub window: Duration,
    /// First back-off; doubled for each restart still in the window.
    pub backoff: Duration,
    /// Longest back-off.
    pub max_backoff: Duration,
}

impl Default for RestartLimits {
    /// 4 restarts in 2 minutes, back-off 1 s, 2 s, 4 s, 8 s.
    fn default() -> Self {
        RestartLimits {
            max_restarts: 4,
            window: Duration::from_secs(120),
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// What to do after a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start it again after this delay.
    RestartAfter(Duration),
    /// Too many crashes: mark the deployment failed.
    GiveUp,
}

/// Restart bookkeeping of one deployment.
#[derive(Debug, Clone)]
pub struct RestartTracker {
    limits: RestartLimits,
    recent: VecDeque<Instant>,
}

impl RestartTracker {
    /// A tracker with no restarts yet.
    pub fn new(limits: RestartLimits) -> Self {
        RestartTracker {
            limits,
            recent: VecDeque::new(),
        }
    }

    /// Records a crash at `now` and decides.
    pub fn on_crash(&mut self, now: Instant) -> Decision {
        while let Some(&t) = self.recent.front() {
            if now.saturating_duration_since(t) >= self.limits.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        if self.recent.len() >= self.limits.max_restarts {
            return Decision::GiveUp;
        }
        let exp = u32::try_from(self.recent.len()).unwrap_or(u32::MAX).min(16);
        let delay = self
            .limits
            .backoff
            .saturating_mul(1 << exp)
            .min(self.limits.max_backoff);
        self.recent.push_back(now);
        Decision::RestartAfter(delay)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn four_restarts_in_two_minutes_then_failed() {
        let mut t = RestartTracker::new(RestartLimits::default());
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(t.on_crash(t0), Decision::RestartAfter(s(1)));
        assert_eq!(t.on_crash(t0 + s(2)), Decision::RestartAfter(s(2)));
        assert_eq!(t.on_crash(t0 + s(5)), Decision::RestartAfter(s(4)));
        assert_eq!(t.on_crash(t0 + s(10)), Decision::RestartAfter(s(8)));
        assert_eq!(t.on_crash(t0 + s(20)), Decision::GiveUp);
    }

    #[test]
    fn crashes_spread_beyond_the_window_keep_restarting() {
        let mut t = RestartTracker::new(RestartLimits::default());
        let t0 = Instant::now();
        for i in 0..20u64 {
            // one crash every 31 s: never 5 within 120 s
            assert!(
                matches!(
                    t.on_crash(t0 + Duration::from_secs(31 * i)),
                    Decision::RestartAfter(_)
                ),
                "crash {i}"
            );
        }
        // but four quick ones after that exhaust the window again
        let t1 = t0 + Duration::from_secs(31 * 20);
        let results: Vec<_> = (0..4)
            .map(|i| t.on_crash(t1 + Duration::from_secs(i)))
            .collect();
        assert_eq!(results.last(), Some(&Decision::GiveUp), "{results:?}");
    }
}
