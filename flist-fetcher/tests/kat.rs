//! Known-answer test: block key, id and ciphertext computed by an independent
//! implementation (tests/fixtures/kat.py: Python hashlib + python-snappy +
//! cryptography), checked in as tests/fixtures/kat.txt.
#![allow(clippy::unwrap_used)]

use flist_fetcher::block::{self, from_hex, Block};
use std::collections::HashMap;

fn fixture() -> HashMap<String, String> {
    let text = include_str!("fixtures/kat.txt");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l.split_once(" = ").unwrap();
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

// The same plaintext generators as kat.py.
fn text_block() -> Vec<u8> {
    let mut v = b"zvm flist known-answer test block\n".repeat(100);
    v.extend(0..=255u8);
    v
}

fn lcg_block(n: usize) -> Vec<u8> {
    let mut x: u64 = 12345;
    (0..n)
        .map(|_| {
            x = (x * 1_103_515_245 + 12345) & 0x7FFF_FFFF;
            ((x >> 16) & 0xFF) as u8
        })
        .collect()
}

fn mixed_block(n: usize) -> Vec<u8> {
    let noise = lcg_block(n);
    let pattern = b"0123456789abcdef".repeat(256);
    let mut out = Vec::with_capacity(n);
    for (i, chunk) in noise.chunks(4096).enumerate() {
        if i % 2 == 1 {
            out.extend_from_slice(&pattern[..chunk.len()]);
        } else {
            out.extend_from_slice(chunk);
        }
    }
    out
}

fn hash32(s: &str) -> [u8; 32] {
    from_hex(s).unwrap().try_into().unwrap()
}

#[test]
fn known_answers_match_python() {
    let fx = fixture();
    let vectors = [
        ("text", text_block()),
        ("lcg70000", lcg_block(70000)),
        ("mixed200000", mixed_block(200_000)),
    ];
    for (name, plain) in vectors {
        let get = |field: &str| {
            fx.get(&format!("{name}.{field}"))
                .unwrap_or_else(|| panic!("{name}.{field} missing"))
        };
        assert_eq!(
            plain.len().to_string(),
            *get("len"),
            "{name}: plaintext generator differs"
        );
        let (blk, ct) = block::encrypt(&plain).unwrap();
        assert_eq!(blk.key, hash32(get("key")), "{name}: key");
        assert_eq!(
            ct.len().to_string(),
            *get("ct_len"),
            "{name}: ciphertext length"
        );
        assert_eq!(blk.id, hash32(get("id")), "{name}: id");
        if let Some(ct_hex) = fx.get(&format!("{name}.ct")) {
            let py_ct = from_hex(ct_hex).unwrap();
            assert_eq!(ct, py_ct, "{name}: ciphertext");
            // and decoding the independent ciphertext gives the plaintext back
            let b = Block {
                id: hash32(get("id")),
                key: hash32(get("key")),
            };
            assert_eq!(block::decrypt(&b, &py_ct).unwrap(), plain);
        }
    }
}
