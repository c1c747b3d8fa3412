//! Restart back-off for long-running services: 1 s after the first death, doubling up to
//! 30 s; a service that stayed up long enough starts again from 1 s.

use std::time::Duration;

/// Back-off policy and state for one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The largest delay.
    pub max: Duration,
    /// A run at least this long resets the delay to `initial`.
    pub reset_after: Duration,
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(
            Duration::from_secs(1),
            Duration::from_secs(30),
            Duration::from_secs(60),
        )
    }
}

impl Backoff {
    /// A policy starting at `initial`, doubling up to `max`, reset by a run of `reset_after`.
    pub fn new(initial: Duration, max: Duration, reset_after: Duration) -> Self {
        Backoff {
            initial,
            max,
            reset_after,
            next: initial,
        }
    }

    /// The service died after running for `ran`: how long to wait before starting it again.
    pub fn on_exit(&mut self, ran: Duration) -> Duration {
        if ran >= self.reset_after {
            self.next = self.initial;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..8)
            .map(|_| b.on_exit(Duration::from_millis(10)).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn a_long_run_resets_the_delay() {
        let mut b = Backoff::default();
        b.on_exit(Duration::ZERO);
        b.on_exit(Duration::ZERO);
        assert_eq!(b.on_exit(Duration::from_secs(5)), Duration::from_secs(4));
        assert_eq!(b.on_exit(Duration::from_secs(60)), Duration::from_secs(1));
        assert_eq!(b.on_exit(Duration::ZERO), Duration::from_secs(2));
    }
}
