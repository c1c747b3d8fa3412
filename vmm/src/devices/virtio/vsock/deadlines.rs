//! The moments by which connections must have moved on (a guest answering a connection
//! request, a guest finishing a shutdown), kept in a min-heap and served by one timerfd
//! in the muxer's epoll set.
//!
//! Entries are checked lazily: each names a connection by key and serial, so an entry of
//! a connection that has since gone (or whose key was reused) is recognized and dropped
//! when it comes due, and a connection whose deadline moved later is simply scheduled
//! again then. So each connection has at most one entry, and moving a deadline later costs
//! nothing.

use super::muxer::ConnKey;
use crate::timerfd::TimerFd;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

/// A connection's identity: its key and the serial number it was created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConnId {
    /// Its ports.
    pub key: ConnKey,
    /// Unique among the muxer's connections, over its whole life.
    pub serial: u64,
}

/// Pending deadlines and their timer.
#[derive(Debug)]
pub struct Deadlines {
    heap: BinaryHeap<Reverse<(Instant, ConnId)>>,
    timer: TimerFd,
    armed_for: Option<Instant>,
}

impl Deadlines {
    /// An empty set with a new, disarmed timer.
    pub fn new() -> io::Result<Self> {
        Ok(Deadlines {
            heap: BinaryHeap::new(),
            timer: TimerFd::new()?,
            armed_for: None,
        })
    }

    /// The timer's fd, readable once the earliest deadline passed.
    pub fn timer_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    /// Adds an entry for `id` at `at` (the caller keeps one per connection).
    pub fn schedule(&mut self, at: Instant, id: ConnId) {
        self.heap.push(Reverse((at, id)));
    }

    /// Removes and returns the earliest entry if it is due by `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, ConnId)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    /// Clears the timer's expiry count, after it fired.
    pub fn clear_timer(&mut self) {
        self.timer.clear();
        self.armed_for = None;
    }

    /// Arms the timer for the earliest entry (when that changed), or disarms it.
    pub fn rearm(&mut self, now: Instant) {
        let next = self.heap.peek().map(|Reverse((at, _))| *at);
        if next == self.armed_for {
            return;
        }
        let result = match next {
            Some(at) => self.timer.arm(at.saturating_duration_since(now)),
            None => self.timer.disarm(),
        };
        match result {
            Ok(()) => self.armed_for = next,
            Err(e) => tracing::warn!("vsock: cannot arm the deadline timer: {e}"),
        }
    }

    /// Forgets every entry without a system call: a device reset runs on a vCPU thread,
    /// whose filter has no `timerfd_settime`. A timer still armed fires on the VMM thread
    /// later, finds nothing due and is left disarmed.
    pub fn clear(&mut self) {
        self.heap.clear();
    }

    /// Number of entries (tests).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn id(port: u32, serial: u64) -> ConnId {
        ConnId {
            key: ConnKey {
                local_port: port,
                peer_port: 1,
            },
            serial,
        }
    }

    #[test]
    fn entries_come_due_in_order_and_the_timer_follows_the_earliest() {
        let mut d = Deadlines::new().expect("deadlines");
        let now = Instant::now();
        d.schedule(now + Duration::from_millis(30), id(2, 2));
        d.schedule(now + Duration::from_millis(10), id(1, 1));
        d.rearm(now);
        assert_eq!(d.armed_for, Some(now + Duration::from_millis(10)));
        assert!(d.pop_due(now).is_none(), "nothing is due yet");
        std::thread::sleep(Duration::from_millis(25));
        d.clear_timer();
        let later = Instant::now();
        assert_eq!(d.pop_due(later).map(|(_, i)| i), Some(id(1, 1)));
        assert!(d.pop_due(later).is_none());
        d.rearm(later);
        assert_eq!(d.armed_for, Some(now + Duration::from_millis(30)));
        d.clear();
        assert_eq!(d.len(), 0);
        d.rearm(later);
        assert_eq!(d.armed_for, None, "the next rearm disarms it");
    }
}
