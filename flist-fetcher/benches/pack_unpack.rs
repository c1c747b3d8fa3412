//! Pack/unpack throughput against `tar | zstd`.
//!
//! `cargo bench -p flist-fetcher` generates a rootfs-like tree (default
//! 256 MiB; `FLIST_BENCH_MIB=64` for a smaller one; `FLIST_BENCH_DIR` picks
//! the scratch directory), then measures:
//! - pack into a fresh local `dir://` store,
//! - unpack with a cold cache (blocks fetched from the dir store),
//! - unpack with a warm cache,
//! - `tar -c | zstd` and `zstd -d | tar -x` of the same tree,
//!
//! and prints MiB/s and the ratios (goal: unpack >= 50% of `tar -x` speed).
//! All data lives in the page cache; nothing is fsync'ed by either side.
#![allow(clippy::unwrap_used)]

use flist_fetcher::{pack, unpack, PackOptions, UnpackOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const WORDS: &[&str] = &[
    "lib", "usr", "share", "config", "return", "static", "const", "void", "int", "struct", "the",
    "of", "and", "error", "value", "function", "if", "else", "for", "while", "include", "define",
    "package", "version",
];

/// Content resembling a rootfs: text-like (compressible) or binary-like (random with some structure).
fn content(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 64);
    if rng.below(2) == 0 {
        while v.len() < len {
            v.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
            v.push(if rng.below(8) == 0 { b'\n' } else { b' ' });
        }
    } else {
        while v.len() < len {
            if rng.below(4) == 0 {
                v.extend_from_slice(&[0u8; 64]);
            } else {
                for _ in 0..8 {
                    v.extend_from_slice(&rng.next().to_le_bytes());
                }
            }
        }
    }
    v.truncate(len);
    v
}

fn generate(root: &Path, total: u64) -> (u64, u64) {
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let (mut bytes, mut files) = (0u64, 0u64);
    let mut dirs = vec![root.to_path_buf()];
    for i in 0..24 {
        for j in 0..8 {
            let d = root.join(format!("dir{i:02}")).join(format!("sub{j}"));
            std::fs::create_dir_all(&d).unwrap();
            dirs.push(d);
        }
    }
    // ~30% of bytes in small files, ~30% medium, ~40% large
    let budgets = [
        (total * 3 / 10, 512u64, 64 * 1024u64),
        (total * 3 / 10, 64 * 1024, 1 << 20),
        (total * 4 / 10, 4 << 20, 24 << 20),
    ];
    for (budget, lo, hi) in budgets {
        let mut used = 0;
        while used < budget {
            let size = (lo + rng.below(hi - lo)).min(budget - used).max(1);
            let dir = &dirs[rng.below(dirs.len() as u64) as usize];
            let path = dir.join(format!("f{files:06}"));
            let mut f = std::fs::File::create(&path).unwrap();
            f.write_all(&content(&mut rng, size as usize)).unwrap();
            used += size;
            files += 1;
        }
        bytes += used;
    }
    for i in 0..200 {
        let d = &dirs[i % dirs.len()];
        std::os::unix::fs::symlink(format!("../target{i}"), d.join(format!("link{i}"))).unwrap();
    }
    (bytes, files)
}

fn mibps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn sh(cmd: &str) -> Duration {
    let t = Instant::now();
    let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
    assert!(st.success(), "`{cmd}` failed");
    t.elapsed()
}

fn rm(p: &Path) {
    let _ = Command::new("rm").arg("-rf").arg(p).status();
}

fn main() {
    // cargo bench passes --bench; ignore arguments
    let mib: u64 = std::env::var("FLIST_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let base: PathBuf =
        std::env::var_os("FLIST_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    for tool in ["tar", "zstd"] {
        let ok = Command::new(tool)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            eprintln!(
                "{tool} is not installed (Debian: apt-get install -y {tool}); cannot compare"
            );
            std::process::exit(1);
        }
    }
    let work = tempfile::Builder::new()
        .prefix("flist-bench-")
        .tempdir_in(&base)
        .unwrap();
    let w = work.path();
    let src = w.join("src");
    let (bytes, files) = generate(&src, mib << 20);
    println!(
        "tree: {files} files, {:.1} MiB, in {}",
        bytes as f64 / (1 << 20) as f64,
        w.display()
    );
    let _ = sh("sync");

    let store = w.join("store");
    let fl = w.join("bench.fl");
    let opts = PackOptions {
        stores: vec![format!("dir://{}", store.display())],
        ..PackOptions::default()
    };
    let t = Instant::now();
    let stats = pack(&src, &fl, &opts).unwrap();
    let t_pack = t.elapsed();
    let store_mib = dir_size(&store) as f64 / (1 << 20) as f64;
    println!(
        "pack: {} blocks ({} unique), store {store_mib:.1} MiB",
        stats.blocks, stats.unique_blocks
    );

    let cache = w.join("cache");
    let out = w.join("out");
    let t = Instant::now();
    unpack(&fl, &out, &UnpackOptions::new(&cache)).unwrap();
    let t_cold = t.elapsed();
    rm(&out);
    let t = Instant::now();
    unpack(&fl, &out, &UnpackOptions::new(&cache)).unwrap();
    let t_warm = t.elapsed();
    rm(&out);

    let tar = w.join("tree.tar.zst");
    let t_tar_c = sh(&format!(
        "tar -C '{}' -cf - . | zstd -q -c > '{}'",
        src.display(),
        tar.display()
    ));
    let tar_mib = std::fs::metadata(&tar).unwrap().len() as f64 / (1 << 20) as f64;
    std::fs::create_dir_all(&out).unwrap();
    let t_tar_x = sh(&format!(
        "zstd -q -d -c '{}' | tar -C '{}' -xf -",
        tar.display(),
        out.display()
    ));
    rm(&out);

    println!();
    println!("{:<34} {:>9} {:>10}", "operation", "seconds", "MiB/s");
    for (name, d) in [
        ("flist pack (dir store)", t_pack),
        ("flist unpack, cold cache", t_cold),
        ("flist unpack, warm cache", t_warm),
        ("tar -c | zstd", t_tar_c),
        ("zstd -d | tar -x", t_tar_x),
    ] {
        println!(
            "{name:<34} {:>9.2} {:>10.1}",
            d.as_secs_f64(),
            mibps(bytes, d)
        );
    }
    println!();
    println!("sizes: store {store_mib:.1} MiB, tar.zst {tar_mib:.1} MiB");
    let ratio = |a: Duration, b: Duration| b.as_secs_f64() / a.as_secs_f64() * 100.0;
    println!(
        "pack vs tar -c | zstd:          {:6.1}% of tar speed",
        ratio(t_pack, t_tar_c)
    );
    println!(
        "unpack cold vs zstd -d | tar -x: {:6.1}% of tar speed",
        ratio(t_cold, t_tar_x)
    );
    println!(
        "unpack warm vs zstd -d | tar -x: {:6.1}% of tar speed (goal >= 50%)",
        ratio(t_warm, t_tar_x)
    );
}

fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.len();
            }
        }
    }
    total
}
