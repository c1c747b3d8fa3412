//! The agent protocol's frame decoder, both ways: what a guest sends the host (agent
//! messages) and what reaches the agent (requests), in pieces as a socket delivers them.
#![no_main]

use agent_protocol::{AgentMessage, FrameDecoder, Request};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let (head, tail) = data.split_at(split);
    let mut host = FrameDecoder::new();
    let mut agent = FrameDecoder::new();
    for piece in [head, tail] {
        host.push(piece);
        agent.push(piece);
        while let Ok(Some(_)) = host.next_frame::<AgentMessage>() {}
        while let Ok(Some(_)) = agent.next_frame::<Request>() {}
    }
    let _ = host.finish();
});
