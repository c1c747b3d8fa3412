//! Shared helpers for the integration tests: a sample tree, a tree comparator,
//! a tiny HTTP server and a throw-away redis-server.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const KIB: usize = 1024;
pub const BLOCK: usize = 512 * KIB;

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn mknod(path: &Path, mode: u32, dev: u64) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let rc = unsafe { libc::mknod(c.as_ptr(), mode, dev) };
    assert_eq!(
        rc,
        0,
        "mknod {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

fn set_mtime(path: &Path, secs: i64) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let ts = libc::timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            [ts, ts].as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0, "utimensat {}", path.display());
}

fn write(path: &Path, data: &[u8], mode: u32) {
    std::fs::write(path, data).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Builds the sample tree used by the round-trip tests; returns its root.
///
/// Covers: files of 0, 1, 512 KiB, 512 KiB + 1 and several MiB; repeated and
/// duplicated blocks; empty and nested dirs; relative, absolute and dangling
/// symlinks; a fifo; (as root) a char device and odd owners; set-id, sticky,
/// 000 and read-only-directory modes; fixed mtimes.
pub fn sample_tree(base: &Path) -> PathBuf {
    let root = base.join("src");
    std::fs::create_dir_all(root.join("a/b/c/empty")).unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::fs::create_dir_all(root.join("ro/inner")).unwrap();
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    write(&root.join("zero"), b"", 0o644);
    write(&root.join("one"), b"x", 0o600);
    write(&root.join("block"), &noise(BLOCK, 1), 0o644);
    write(&root.join("block+1"), &noise(BLOCK + 1, 2), 0o640);
    let big = noise(3 * 1024 * KIB + 12345, 3);
    write(&root.join("a/big"), &big, 0o755);
    write(&root.join("a/b/big-head"), &big[..BLOCK + 10], 0o644); // shares its first block
    write(&root.join("zeros"), &vec![0u8; 2 * BLOCK], 0o644); // 2 identical blocks
    write(
        &root.join("text"),
        &b"the quick brown fox\n".repeat(10_000),
        0o444,
    );
    write(&root.join("setuid"), b"#!/bin/sh\n", 0o4755);
    write(&root.join("setgid"), b"#!/bin/sh\n", 0o2711);
    if is_root() {
        write(&root.join("noperm"), b"secret", 0o000); // unreadable for others
    }
    write(&root.join("ro/inner/file"), b"inside read-only dir", 0o644);
    std::fs::hard_link(root.join("one"), root.join("one-hardlink")).unwrap();
    std::os::unix::fs::symlink("one", root.join("link-rel")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("link-abs")).unwrap();
    std::os::unix::fs::symlink("../nowhere", root.join("a/dangling")).unwrap();
    std::os::unix::fs::symlink("a/b", root.join("link-dir")).unwrap();
    mknod(&root.join("fifo"), libc::S_IFIFO | 0o620, 0);
    if is_root() {
        mknod(
            &root.join("null"),
            libc::S_IFCHR | 0o666,
            libc::makedev(1, 3),
        );
        for (p, uid, gid) in [
            ("one", 1234, 5678),
            ("a/big", 0, 42),
            ("link-rel", 77, 88),
            ("a/b", 1000, 1001),
            ("fifo", 5, 6),
        ] {
            std::os::unix::fs::lchown(root.join(p), Some(uid), Some(gid)).unwrap();
        }
    }
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    // mtimes last, deepest first, so creating children does not disturb them
    for (i, p) in [
        "a/b/c/empty",
        "a/b/c",
        "link-rel",
        "a/dangling",
        "fifo",
        "zero",
        "a/big",
        "ro/inner/file",
        "ro/inner",
    ]
    .iter()
    .enumerate()
    {
        set_mtime(&root.join(p), 1_000_000_000 + i as i64 * 1000);
    }
    std::fs::set_permissions(root.join("ro"), std::fs::Permissions::from_mode(0o555)).unwrap();
    set_mtime(&root.join("ro"), 1_200_000_000);
    set_mtime(&root.join("a/b"), 1_300_000_000);
    set_mtime(&root.join("a"), 1_400_000_000);
    root
}

#[derive(Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: u32,
    pub perm: u32,
    pub owner: Option<(u32, u32)>,
    pub size: u64,
    pub mtime: Option<i64>,
    pub content: Option<Vec<u8>>,
    pub link: Option<PathBuf>,
    pub rdev: u64,
}

/// Snapshot of a tree for comparison (directory mtimes included, root excluded).
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    let m = std::fs::metadata(root).unwrap();
    out.insert(
        PathBuf::from("."),
        Node {
            kind: libc::S_IFDIR,
            perm: m.mode() & 0o7777,
            owner: is_root().then_some((m.uid(), m.gid())),
            size: 0,
            mtime: Some(m.mtime()),
            content: None,
            link: None,
            rdev: 0,
        },
    );
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let path = root.join(&rel);
        for entry in std::fs::read_dir(&path).unwrap() {
            let entry = entry.unwrap();
            let rel = rel.join(entry.file_name());
            let full = root.join(&rel);
            let m = std::fs::symlink_metadata(&full).unwrap();
            let kind = m.mode() & libc::S_IFMT;
            let node = Node {
                kind,
                perm: m.mode() & 0o7777,
                owner: is_root().then_some((m.uid(), m.gid())),
                size: if m.is_file() { m.size() } else { 0 },
                mtime: Some(m.mtime()),
                content: m.is_file().then(|| std::fs::read(&full).unwrap()),
                link: m.is_symlink().then(|| std::fs::read_link(&full).unwrap()),
                rdev: if kind == libc::S_IFCHR || kind == libc::S_IFBLK {
                    m.rdev()
                } else {
                    0
                },
            };
            if m.is_dir() {
                stack.push(rel.clone());
            }
            out.insert(rel, node);
        }
    }
    out
}

/// Asserts two trees are identical (content, types, modes, owners when root, mtimes).
pub fn assert_same_tree(a: &Path, b: &Path) {
    let sa = snapshot(a);
    let sb = snapshot(b);
    let ka: Vec<_> = sa.keys().collect();
    let kb: Vec<_> = sb.keys().collect();
    assert_eq!(ka, kb, "different entries");
    for (k, va) in &sa {
        let vb = &sb[k];
        assert_eq!(va, vb, "entry {} differs", k.display());
    }
}

/// Removes a tree even if it contains read-only directories.
pub fn force_remove(p: &Path) {
    let _ = Command::new("chmod").arg("-R").arg("u+rwx").arg(p).status();
    let _ = std::fs::remove_dir_all(p);
}

/// Lists files under `dir` (recursively) whose name contains `needle`.
pub fn find_names(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_name().to_string_lossy().contains(needle) {
                out.push(p.clone());
            }
            if std::fs::symlink_metadata(&p)
                .map(|m| m.is_dir())
                .unwrap_or(false)
            {
                stack.push(p);
            }
        }
    }
    out
}

/// Files of a flat dir store.
pub fn store_objects(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = find_names(dir, "")
        .into_iter()
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n.len() == 64))
        .collect();
    v.sort();
    v
}

/// A minimal static HTTP server over a directory (GET only, one request per connection).
pub struct HttpServer {
    pub url: String,
    pub requests: Arc<AtomicUsize>,
    pub not_found: Arc<AtomicUsize>,
}

pub fn serve_dir(root: PathBuf) -> HttpServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let not_found = Arc::new(AtomicUsize::new(0));
    let (r, nf) = (requests.clone(), not_found.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            let (root, r, nf) = (root.clone(), r.clone(), nf.clone());
            std::thread::spawn(move || handle(stream, &root, &r, &nf));
        }
    });
    HttpServer {
        url,
        requests,
        not_found,
    }
}

fn handle(stream: TcpStream, root: &Path, requests: &AtomicUsize, not_found: &AtomicUsize) {
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
    }
    requests.fetch_add(1, Ordering::SeqCst);
    let path = line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .trim_start_matches('/')
        .to_string();
    let mut stream = stream;
    let body = if path.split('/').any(|c| c == "..") {
        None
    } else {
        std::fs::read(root.join(&path)).ok()
    };
    match body {
        Some(b) => {
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                b.len()
            );
            let _ = stream.write_all(&b);
        }
        None => {
            not_found.fetch_add(1, Ordering::SeqCst);
            let _ = stream.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    }
    let _ = stream.flush();
}

/// A redis-server on a free loopback port, killed on drop.
pub struct Redis {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Redis {
    pub fn start() -> Redis {
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status();
        if !matches!(found, Ok(s) if s.success()) {
            panic!(
                "redis-server is not installed, so the zdb store test cannot run. \
                 Install it (Debian: `apt-get install -y redis-server`); CI installs it."
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let redis = Redis {
            port,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.write_all(b"PING\r\n");
                let mut buf = [0u8; 7];
                if s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n" {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        redis
    }

    /// Number of keys in database `db`.
    pub fn dbsize(&self, db: u32) -> usize {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(s, "SELECT {db}\r\nDBSIZE\r\n").unwrap();
        let mut r = BufReader::new(s);
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        l.clear();
        r.read_line(&mut l).unwrap();
        l.trim().trim_start_matches(':').parse().unwrap()
    }
}

/// A port on loopback with nothing listening.
pub fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let p = l.local_addr().unwrap().port();
    drop(l);
    p
}
