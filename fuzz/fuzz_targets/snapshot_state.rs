//! A snapshot's state file. Most inputs are wrapped in a valid header and checksum first,
//! so the fuzzer reaches the decoding of the VM state itself (bincode of attacker bytes);
//! the rest go in raw, for the header checks.
#![no_main]

use vmm::snapshot::file::{decode, FORMAT_VERSION, MAGIC};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&raw, payload)) = data.split_first() else {
        return;
    };
    if raw == 0 {
        let _ = decode(payload);
        return;
    }
    let mut file = Vec::with_capacity(payload.len() + 24);
    file.extend_from_slice(&MAGIC);
    file.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    file.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    file.extend_from_slice(payload);
    let crc = crc32fast::hash(&file);
    file.extend_from_slice(&crc.to_le_bytes());
    let _ = decode(&file);
});
