//! The requests a device has handed to an asynchronous engine and not yet answered.

use super::request::Pending;

/// One request in flight.
#[derive(Debug, Clone, Copy)]
pub struct InFlight {
    /// Its chain's head descriptor, for the used ring.
    pub head: u16,
    /// How to answer it.
    pub pending: Pending,
    /// The activation it belongs to: completions of requests from before a reset are
    /// dropped, not put on the new queue.
    pub epoch: u64,
}

/// A fixed-capacity table of requests in flight, indexed by token.
#[derive(Debug)]
pub struct InFlightTable {
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
}

impl InFlightTable {
    /// A table of `capacity` slots.
    pub fn new(capacity: usize) -> Self {
        InFlightTable {
            slots: vec![None; capacity],
            free: (0..capacity).rev().collect(),
        }
    }

    /// Requests in flight.
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Whether no request is in flight.
    pub fn is_empty(&self) -> bool {
        self.free.len() == self.slots.len()
    }

    /// Whether no more requests fit.
    pub fn is_full(&self) -> bool {
        self.free.is_empty()
    }

    /// Adds `f`; its token, or None when full.
    pub fn insert(&mut self, f: InFlight) -> Option<u64> {
        let slot = self.free.pop()?;
        self.slots[slot] = Some(f);
        Some(slot as u64)
    }

    /// Takes the request with `token` out, if it is in flight.
    pub fn remove(&mut self, token: u64) -> Option<InFlight> {
        let slot = usize::try_from(token).ok()?;
        let f = self.slots.get_mut(slot)?.take()?;
        self.free.push(slot);
        Some(f)
    }
}
