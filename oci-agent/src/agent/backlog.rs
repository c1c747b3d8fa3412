//! What the agent keeps for the host while none is connected (or the one connected has not sent
//! its Hello yet): every `Exited` event, and the most recent `Output` events up to a budget,
//! older ones dropped and counted. The next host gets them in their original order right after
//! its Hello, so a container that exits while its host is away (a checkpoint, a restore, a
//! restarted host) still reports its exit.

use std::collections::VecDeque;

use agent_protocol::{AgentMessage, Event};

/// Output kept while no host is connected: 1 MiB, counting each message's bytes plus
/// [`MESSAGE_COST`].
pub const OUTPUT_BUDGET: usize = 1 << 20;

/// What one kept output message costs besides its bytes (its bookkeeping), so a flood of tiny
/// writes cannot grow the backlog past its budget.
pub const MESSAGE_COST: usize = 128;

/// Largest output message the backlog makes by appending a write to the one before it (same
/// stream and fd, nothing in between).
const MERGE_MAX: usize = 64 * 1024;

/// Kept messages, in order.
#[derive(Debug)]
pub struct Backlog {
    budget: usize,
    /// Sequence number of the next message.
    next: u64,
    exits: VecDeque<(u64, AgentMessage)>,
    outputs: VecDeque<(u64, AgentMessage)>,
    output_cost: usize,
    dropped_outputs: u64,
    dropped_bytes: u64,
    dropped_responses: u64,
}

impl Default for Backlog {
    fn default() -> Self {
        Self::new(OUTPUT_BUDGET)
    }
}

fn output_cost(stream: &str, data: &[u8]) -> usize {
    data.len() + stream.len() + MESSAGE_COST
}

impl Backlog {
    /// An empty backlog keeping at most `budget` of output.
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            next: 0,
            exits: VecDeque::new(),
            outputs: VecDeque::new(),
            output_cost: 0,
            dropped_outputs: 0,
            dropped_bytes: 0,
            dropped_responses: 0,
        }
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.exits.is_empty() && self.outputs.is_empty()
    }

    /// Keeps `msg` for the next host: always an `Exited` event; an `Output` event within the
    /// budget (dropping the oldest outputs); never a response (its request's host is gone).
    pub fn push(&mut self, msg: AgentMessage) {
        let (stream, fd, data) = match msg {
            AgentMessage::Event(Event::Output { stream, fd, data }) => (stream, fd, data),
            AgentMessage::Event(Event::Exited { .. }) => {
                self.exits.push_back((self.next, msg));
                self.next += 1;
                return;
            }
            AgentMessage::Response { .. } => {
                self.dropped_responses += 1;
                return;
            }
        };
        self.output_cost += data.len();
        if let Some((
            seq,
            AgentMessage::Event(Event::Output {
                stream: s,
                fd: f,
                data: d,
            }),
        )) = self.outputs.back_mut()
        {
            if *seq + 1 == self.next
                && *s == stream
                && *f == fd
                && d.len() + data.len() <= MERGE_MAX
            {
                d.0.extend_from_slice(&data);
                self.trim();
                return;
            }
        }
        self.output_cost += stream.len() + MESSAGE_COST;
        let msg = AgentMessage::Event(Event::Output { stream, fd, data });
        self.outputs.push_back((self.next, msg));
        self.next += 1;
        self.trim();
    }

    /// Drops the oldest outputs until the rest fit the budget.
    fn trim(&mut self) {
        while self.output_cost > self.budget {
            let Some((_, AgentMessage::Event(Event::Output { stream, data, .. }))) =
                self.outputs.pop_front()
            else {
                break;
            };
            self.output_cost -= output_cost(&stream, &data);
            if self.dropped_outputs == 0 {
                tracing::info!(
                    "no host connected: dropping the oldest output beyond {} KiB",
                    self.budget / 1024
                );
            }
            self.dropped_outputs += 1;
            self.dropped_bytes += data.len() as u64;
        }
    }

    /// Everything kept, in order, leaving the backlog empty; logs what was dropped.
    pub fn take(&mut self) -> Vec<AgentMessage> {
        if self.dropped_outputs > 0 {
            tracing::warn!(
                "no host was connected: {} output messages ({} bytes) dropped, the newest {} KiB kept",
                self.dropped_outputs,
                self.dropped_bytes,
                self.budget / 1024
            );
        }
        if self.dropped_responses > 0 {
            tracing::debug!(
                "no host was connected: {} responses dropped",
                self.dropped_responses
            );
        }
        let mut out = Vec::with_capacity(self.exits.len() + self.outputs.len());
        loop {
            let take_exit = match (self.exits.front(), self.outputs.front()) {
                (Some((e, _)), Some((o, _))) => e < o,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let next = if take_exit {
                self.exits.pop_front()
            } else {
                self.outputs.pop_front()
            };
            out.extend(next.map(|(_, m)| m));
        }
        *self = Self::new(self.budget);
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agent_protocol::{Bytes, ExitStatus};

    fn output(stream: &str, fd: u8, data: &str) -> AgentMessage {
        AgentMessage::Event(Event::Output {
            stream: stream.into(),
            fd,
            data: Bytes::from(data),
        })
    }

    fn exited(stream: &str, code: i32) -> AgentMessage {
        AgentMessage::Event(Event::Exited {
            stream: stream.into(),
            status: ExitStatus::exited(code),
        })
    }

    #[test]
    fn events_come_back_in_order_and_responses_are_dropped() {
        let mut b = Backlog::default();
        assert!(b.is_empty());
        b.push(output("e1", 1, "a"));
        b.push(exited("e1", 0));
        b.push(AgentMessage::Response {
            id: 1,
            result: Err("gone".into()),
        });
        b.push(output("init", 2, "b"));
        b.push(output("init", 2, "c"));
        b.push(output("init", 1, "d"));
        b.push(exited("init", 3));
        assert!(!b.is_empty());
        assert_eq!(
            b.take(),
            [
                output("e1", 1, "a"),
                exited("e1", 0),
                // Consecutive writes of one stream and fd come back as one message.
                output("init", 2, "bc"),
                output("init", 1, "d"),
                exited("init", 3),
            ]
        );
        assert!(b.is_empty());
        assert_eq!(b.take(), []);
    }

    #[test]
    fn the_newest_output_within_the_budget_is_kept_and_every_exit() {
        let budget = 4 * (100 + 4 + MESSAGE_COST);
        let mut b = Backlog::new(budget);
        let chunk = |i: usize| format!("{i:0100}");
        for i in 0..10 {
            // fd alternates, so no two writes merge.
            b.push(output("init", 1 + (i % 2) as u8, &chunk(i)));
            if i == 2 {
                b.push(exited("e1", 1));
            }
        }
        b.push(exited("init", 0));
        let kept = b.take();
        assert_eq!(kept.len(), 6, "{kept:?}");
        assert_eq!(kept[0], exited("e1", 1));
        for (k, i) in kept[1..5].iter().zip(6..10) {
            assert_eq!(*k, output("init", 1 + (i % 2) as u8, &chunk(i)));
        }
        assert_eq!(kept[5], exited("init", 0));
    }

    #[test]
    fn merged_output_stays_under_the_merge_limit_and_the_budget() {
        let mut b = Backlog::default();
        let write = "x".repeat(10 * 1024);
        for _ in 0..300 {
            b.push(output("init", 1, &write));
        }
        let kept = b.take();
        let sizes: Vec<usize> = kept
            .iter()
            .map(|m| match m {
                AgentMessage::Event(Event::Output { data, .. }) => data.len(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(sizes.iter().all(|&s| s == 60 * 1024), "{sizes:?}");
        let total: usize = sizes.iter().sum();
        assert!(
            total <= OUTPUT_BUDGET && total > OUTPUT_BUDGET - 2 * MERGE_MAX,
            "{total}"
        );
    }
}
