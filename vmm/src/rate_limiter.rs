//! A Firecracker-style I/O rate limiter: two token buckets, one for bytes (bandwidth) and
//! one for operations.
//!
//! A bucket holds up to `size` tokens and refills completely in `refill_time` ms (at a
//! steady rate, so partial refills happen continuously); an optional `one_time_burst`
//! is spent before the bucket and never refills. A device asks [`RateLimiter::consume`]
//! before each request; when a bucket is short, the limiter arms a timerfd for the moment
//! enough tokens are back and reports itself blocked. The device stops processing, polls
//! [`RateLimiter::timer_fd`], and calls [`RateLimiter::on_timer`] when it fires.
//!
//! The bucket arithmetic takes the time as an argument, so it is tested with a fake clock.

use crate::timerfd::TimerFd;
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

/// Errors creating a rate limiter.
#[derive(Debug, thiserror::Error)]
pub enum RateLimiterError {
    /// The timerfd could not be created or armed.
    #[error("rate limiter timerfd: {0}")]
    Timer(#[from] io::Error),
}

/// One token bucket as configured (Firecracker's `TokenBucket` JSON object).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketConfig {
    /// Capacity of the bucket, in tokens (bytes or operations).
    pub size: u64,
    /// Extra tokens available once, at the start, spent before the bucket's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Milliseconds it takes to refill an empty bucket completely.
    pub refill_time: u64,
}

/// A rate limiter as configured (Firecracker's `RateLimiter` JSON object). A missing
/// bucket, or one with `size` or `refill_time` 0, does not limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucketConfig>,
    /// Operations (requests, frames).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucketConfig>,
}

/// Which bucket a consumption draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    /// Bytes.
    Bytes,
    /// Operations.
    Ops,
}

/// A token bucket; times are nanoseconds on a monotonic clock chosen by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBucket {
    size: u64,
    one_time_burst: u64,
    refill_ns: u64,
    budget: u64,
    /// Tokens consumed beyond the budget by one oversized request; repaid by refills.
    debt: u64,
    last_update: u64,
}

impl TokenBucket {
    /// A full bucket at time `now`; `None` when the config does not limit anything.
    pub fn new(config: &TokenBucketConfig, now: u64) -> Option<Self> {
        if config.size == 0 || config.refill_time == 0 {
            return None;
        }
        Some(TokenBucket {
            size: config.size,
            one_time_burst: config.one_time_burst.unwrap_or(0),
            refill_ns: config.refill_time.saturating_mul(1_000_000),
            budget: config.size,
            debt: 0,
            last_update: now,
        })
    }

    /// Adds the tokens earned since the last update (a whole number; the remainder of the
    /// elapsed time carries over).
    fn refill(&mut self, now: u64) {
        let elapsed = u128::from(now.saturating_sub(self.last_update));
        let (size, refill) = (u128::from(self.size), u128::from(self.refill_ns));
        let earned = elapsed * size / refill;
        if earned == 0 {
            return;
        }
        if earned >= size + u128::from(self.debt) {
            // Long idle: full bucket, no debt; keep no stale remainder.
            self.last_update = now;
            self.debt = 0;
            self.budget = self.size;
            return;
        }
        // earned < size + debt <= 2^64 * 2, and the time it stands for is < elapsed.
        self.last_update += (earned * refill / size) as u64;
        let mut earned = earned as u64;
        let repaid = earned.min(self.debt);
        self.debt -= repaid;
        earned -= repaid;
        self.budget = self.budget.saturating_add(earned).min(self.size);
    }

    /// Takes `tokens` at time `now`; false (and nothing taken) when there are not enough.
    /// A request larger than the bucket passes when the bucket is full, leaving a debt
    /// that later refills repay first.
    pub fn consume(&mut self, tokens: u64, now: u64) -> bool {
        self.refill(now);
        let from_burst = tokens.min(self.one_time_burst);
        let rest = tokens - from_burst;
        if self.debt == 0 && rest <= self.budget {
            self.one_time_burst -= from_burst;
            self.budget -= rest;
            return true;
        }
        if self.debt == 0 && rest > self.size && self.budget == self.size {
            self.one_time_burst -= from_burst;
            self.debt = rest - self.budget;
            self.budget = 0;
            return true;
        }
        false
    }

    /// Gives back `tokens` taken by a request that did not happen after all.
    pub fn replenish(&mut self, tokens: u64) {
        let repaid = tokens.min(self.debt);
        self.debt -= repaid;
        self.budget = self.budget.saturating_add(tokens - repaid).min(self.size);
    }

    /// Nanoseconds from `now` until `tokens` could be consumed (at least 1 ms).
    pub fn wait_ns(&self, tokens: u64, now: u64) -> u64 {
        let want = tokens.saturating_sub(self.one_time_burst).min(self.size);
        let missing = u128::from(want.saturating_sub(self.budget)) + u128::from(self.debt);
        let ns = (missing * u128::from(self.refill_ns)).div_ceil(u128::from(self.size));
        let since = u128::from(now.saturating_sub(self.last_update));
        u64::try_from(ns.saturating_sub(since))
            .unwrap_or(u64::MAX)
            .max(1_000_000)
    }

    /// Tokens available now (bucket plus burst), for tests and metrics.
    pub fn available(&self) -> u64 {
        if self.debt > 0 {
            return self.one_time_burst;
        }
        self.budget.saturating_add(self.one_time_burst)
    }
}

/// The bandwidth and ops buckets of one device direction, with the timer that ends a
/// throttling period.
#[derive(Debug)]
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer: TimerFd,
    blocked: bool,
    epoch: Instant,
}

impl RateLimiter {
    /// A limiter with full buckets.
    pub fn new(config: &RateLimiterConfig) -> Result<Self, RateLimiterError> {
        Ok(RateLimiter {
            bandwidth: config
                .bandwidth
                .as_ref()
                .and_then(|c| TokenBucket::new(c, 0)),
            ops: config.ops.as_ref().and_then(|c| TokenBucket::new(c, 0)),
            timer: TimerFd::new()?,
            blocked: false,
            epoch: Instant::now(),
        })
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn bucket(&mut self, kind: TokenType) -> Option<&mut TokenBucket> {
        match kind {
            TokenType::Bytes => self.bandwidth.as_mut(),
            TokenType::Ops => self.ops.as_mut(),
        }
    }

    /// Takes `tokens` of `kind` now; when there are not enough the limiter becomes blocked
    /// and arms its timer for when there will be.
    pub fn consume(&mut self, tokens: u64, kind: TokenType) -> bool {
        let now = self.now();
        self.consume_at(tokens, kind, now)
    }

    /// [`Self::consume`] at time `now` (nanoseconds since the limiter was made).
    pub fn consume_at(&mut self, tokens: u64, kind: TokenType, now: u64) -> bool {
        if self.blocked {
            return false;
        }
        let Some(bucket) = self.bucket(kind) else {
            return true;
        };
        if bucket.consume(tokens, now) {
            return true;
        }
        let wait = bucket.wait_ns(tokens, now);
        self.blocked = true;
        if let Err(e) = self.timer.arm(std::time::Duration::from_nanos(wait)) {
            // Without a timer nothing would wake the device: stay unblocked and retry later.
            tracing::warn!("rate limiter: cannot arm the timer: {e}");
            self.blocked = false;
        }
        tracing::trace!("rate limiter: {kind:?} throttled for {} us", wait / 1000);
        false
    }

    /// Takes one operation and `bytes` bytes, or neither.
    pub fn consume_request(&mut self, bytes: u64) -> bool {
        if !self.consume(1, TokenType::Ops) {
            return false;
        }
        if !self.consume(bytes, TokenType::Bytes) {
            self.replenish(1, TokenType::Ops);
            return false;
        }
        true
    }

    /// Returns tokens taken for a request that did not happen.
    pub fn replenish(&mut self, tokens: u64, kind: TokenType) {
        if let Some(bucket) = self.bucket(kind) {
            bucket.replenish(tokens);
        }
    }

    /// Whether the limiter waits for its timer.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// The timerfd to poll while blocked.
    pub fn timer_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    /// Handles the timer fd becoming readable: clears it and unblocks. Returns whether the
    /// limiter was blocked. (The event loop may have read the expiration count already, so
    /// the count is not checked; the timer is only armed while blocked.)
    pub fn on_timer(&mut self) -> bool {
        self.timer.clear();
        std::mem::replace(&mut self.blocked, false)
    }

    /// Ends a throttling period without waiting (tests).
    pub fn unblock(&mut self) {
        self.timer.clear();
        self.blocked = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn cfg(size: u64, burst: Option<u64>, refill_ms: u64) -> TokenBucketConfig {
        TokenBucketConfig {
            size,
            one_time_burst: burst,
            refill_time: refill_ms,
        }
    }

    #[test]
    fn buckets_refill_at_a_steady_rate() {
        let mut b = TokenBucket::new(&cfg(1000, None, 1000), 0).expect("bucket");
        assert!(b.consume(1000, 0));
        assert!(!b.consume(1, 0), "empty");
        assert_eq!(b.wait_ns(100, 0), 100 * MS);
        assert!(!b.consume(100, 99 * MS));
        assert!(b.consume(100, 100 * MS), "100 tokens after 100 ms");
        assert!(
            b.consume(1000, 2000 * MS),
            "full again, never more than size"
        );
        assert!(!b.consume(1, 2000 * MS));
        // Sub-token remainders carry over.
        let mut b = TokenBucket::new(&cfg(3, None, 10), 0).expect("bucket");
        assert!(b.consume(3, 0));
        assert!(!b.consume(1, 3 * MS));
        assert!(b.consume(1, 4 * MS), "3.33 ms per token");
        assert!(
            b.consume(1, 7 * MS),
            "remainder kept: 6.67 ms for two tokens"
        );
    }

    #[test]
    fn one_time_burst_is_spent_first_and_not_refilled() {
        let mut b = TokenBucket::new(&cfg(100, Some(500), 1000), 0).expect("bucket");
        assert_eq!(b.available(), 600);
        assert!(b.consume(550, 0));
        assert_eq!(b.available(), 50);
        assert!(!b.consume(60, 0));
        assert!(b.consume(150, 10_000 * MS), "bucket refilled to 100 only");
        assert_eq!(b.available(), 0);
    }

    #[test]
    fn oversized_requests_pass_on_a_full_bucket_and_leave_debt() {
        let mut b = TokenBucket::new(&cfg(100, None, 100), 0).expect("bucket");
        assert!(
            b.consume(250, 0),
            "larger than the bucket: allowed when full"
        );
        assert!(!b.consume(1, 100 * MS), "150 tokens of debt: 100 repaid");
        assert_eq!(
            b.wait_ns(1, 100 * MS),
            51 * MS,
            "50 tokens of debt and one to take"
        );
        assert!(!b.consume(250, 150 * MS), "debt repaid but bucket empty");
        assert!(b.consume(250, 250 * MS));
        b.replenish(400);
        assert_eq!(b.available(), 100, "replenish repays debt and caps at size");
    }

    #[test]
    fn disabled_buckets_do_not_limit() {
        assert!(TokenBucket::new(&cfg(0, None, 100), 0).is_none());
        assert!(TokenBucket::new(&cfg(100, None, 0), 0).is_none());
        let mut rl = RateLimiter::new(&RateLimiterConfig::default()).expect("limiter");
        assert!(rl.consume(u64::MAX, TokenType::Bytes));
        assert!(rl.consume_request(1 << 40));
        assert!(!rl.is_blocked());
    }

    #[test]
    fn limiter_blocks_until_its_timer_fires() {
        let config = RateLimiterConfig {
            bandwidth: Some(cfg(1000, None, 20)),
            ops: Some(cfg(2, None, 20)),
        };
        let mut rl = RateLimiter::new(&config).expect("limiter");
        assert!(rl.consume_at(600, TokenType::Bytes, 0));
        assert!(!rl.consume_at(600, TokenType::Bytes, 0));
        assert!(rl.is_blocked());
        assert!(
            !rl.consume_at(1, TokenType::Ops, 0),
            "blocked: nothing passes"
        );
        let mut fds = [libc::pollfd {
            fd: rl.timer_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: polling one valid pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 2000) };
        assert_eq!(n, 1, "the timer fires");
        assert!(rl.on_timer());
        assert!(!rl.is_blocked());
        // Requests take an op and bytes, or neither.
        rl.unblock();
        let mut rl = RateLimiter::new(&config).expect("limiter");
        assert!(rl.consume_request(100));
        assert!(!rl.consume_request(2000), "bytes short");
        rl.unblock();
        assert!(rl.consume_request(100), "the op was given back");
    }

    #[test]
    fn config_matches_firecracker_json() {
        let json = r#"{"bandwidth":{"size":1048576,"one_time_burst":2097152,"refill_time":1000},"ops":{"size":100,"refill_time":1000}}"#;
        let c: RateLimiterConfig = serde_json::from_str(json).expect("parse");
        assert_eq!(c.bandwidth, Some(cfg(1 << 20, Some(2 << 20), 1000)));
        assert_eq!(c.ops, Some(cfg(100, None, 1000)));
        assert_eq!(
            serde_json::to_string(&c).expect("json"),
            json.replace(",\"one_time_burst\":null", "")
        );
        assert!(serde_json::from_str::<RateLimiterConfig>(r#"{"bandwidth":{"size":1}}"#).is_err());
        assert!(serde_json::from_str::<RateLimiterConfig>(r#"{"iops":{}}"#).is_err());
        assert_eq!(
            serde_json::from_str::<RateLimiterConfig>("{}").expect("empty"),
            RateLimiterConfig::default()
        );
    }
}
