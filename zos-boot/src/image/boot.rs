//! What the node image's services run inside the guest (through `zvm node ...`):
//! - [`prepare`] (the `storage` oneshot): format the cache disk on first boot, mount
//!   it at `/var/cache/zos`, load or create the node identity, print `zos: node id <hex>`;
//! - [`serve_args`] (the `node` service): the `zvm node serve` flags for this boot's
//!   `zos.api` setting;
//! - [`report`] (the `report` oneshot): print the daemon's `GET /health` and
//!   `GET /capacity`, then `zos: node ready`; power off in `zos.runmode=test`.

use super::disk::{self, DiskContent};
use super::identity;
use super::settings::{ApiSetting, BootSettings, RunMode};
use super::ImageError;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the cache/state disk is mounted.
pub const CACHE_DIR: &str = "/var/cache/zos";
/// The node daemon's state directory (on the cache disk).
pub const STATE_DIR: &str = "/var/cache/zos/state";
/// The node identity directory (on the cache disk).
pub const IDENTITY_DIR: &str = "/var/cache/zos/identity";
/// The node daemon's API socket.
pub const API_SOCK: &str = "/run/zos/node.sock";
/// mkfs.ext4 inside the image.
pub const MKFS: &str = "/sbin/mkfs.ext4";

fn say(msg: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "zos: {msg}");
    let _ = out.flush();
}

/// First-boot and every-boot storage set-up; returns the node id.
pub fn prepare(settings: &BootSettings, mkfs: &Path, cache: &Path) -> Result<String, ImageError> {
    let disk = &settings.disk;
    if disk.exists() {
        match disk::probe(disk)? {
            DiskContent::Ext4 => say(&format!("reusing the cache disk {}", disk.display())),
            DiskContent::Blank => {
                say(&format!("first boot: formatting {} as ext4", disk.display()));
                disk::format(mkfs, disk)?;
            }
            DiskContent::Unknown => {
                return Err(ImageError::Disk(format!(
                    "{} holds data but no ext4 file system; not formatting it (wipe its first 64 KiB to let the node use it)",
                    disk.display()
                )))
            }
        }
        disk::mount_ext4(disk, cache)?;
        say(&format!(
            "{} mounted on {}",
            disk.display(),
            cache.display()
        ));
    } else {
        say(&format!(
            "no disk {}: node state stays in RAM and is lost at power-off",
            disk.display()
        ));
    }
    for dir in [cache.join("state"), PathBuf::from("/run/zos")] {
        std::fs::create_dir_all(&dir).map_err(|source| ImageError::Io {
            what: format!("create {}", dir.display()),
            source,
        })?;
    }
    let id = identity::load_or_create(&cache.join("identity"), identity::os_random)?;
    say(&format!(
        "node id {}{}",
        id.node_id(),
        if id.created { " (new)" } else { "" }
    ));
    Ok(id.node_id())
}

/// The `zvm node serve` arguments for this boot.
pub fn serve_args(settings: &BootSettings, state_dir: &Path, api_sock: &Path) -> Vec<String> {
    let mut args = vec![
        "node".to_string(),
        "serve".into(),
        "--state-dir".into(),
        state_dir.display().to_string(),
        "--api-sock".into(),
        api_sock.display().to_string(),
    ];
    if let ApiSetting::Tcp(addr) = settings.api {
        args.push("--listen".into());
        args.push(addr.to_string());
    }
    args
}

/// One HTTP/1.1 GET over a Unix socket: (status, body).
pub fn http_get(sock: &Path, path: &str, timeout: Duration) -> Result<(u16, String), ImageError> {
    let io = |what: &str| {
        let what = format!("{what} {}", sock.display());
        move |source| ImageError::Io { what, source }
    };
    let mut stream = UnixStream::connect(sock).map_err(io("connect to"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(io("set timeout on"))?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(io("set timeout on"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(io("write to"))?;
    let mut raw = Vec::new();
    stream
        .take(1 << 20)
        .read_to_end(&mut raw)
        .map_err(io("read from"))?;
    parse_response(&raw)
}

/// Parses an HTTP/1.1 response (Content-Length, chunked, or read to the end).
pub fn parse_response(raw: &[u8]) -> Result<(u16, String), ImageError> {
    let bad = |why: &str| ImageError::Http(why.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers in the response"))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = &raw[split + 4..];
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or_else(|| bad("bad status line"))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| bad("bad Content-Length"))?,
            );
        }
    }
    let body = if chunked {
        let mut out = Vec::new();
        let mut rest = body;
        loop {
            let eol = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| bad("truncated chunk"))?;
            let size_text = String::from_utf8_lossy(&rest[..eol]);
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("bad chunk size"))?;
            rest = &rest[eol + 2..];
            if size == 0 {
                break;
            }
            if rest.len() < size {
                return Err(bad("truncated chunk"));
            }
            out.extend_from_slice(&rest[..size]);
            rest = rest.get(size + 2..).unwrap_or_default();
        }
        out
    } else if let Some(n) = length {
        body.get(..n)
            .ok_or_else(|| bad("body shorter than its Content-Length"))?
            .to_vec()
    } else {
        body.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Whether the daemon answers `GET /health` with 200 (the `node` service's test).
pub fn check(sock: &Path) -> bool {
    matches!(
        http_get(sock, "/health", Duration::from_secs(5)),
        Ok((200, _))
    )
}

/// Prints the daemon's health and capacity on the console, then `zos: node ready`.
/// In test run mode it then asks PID 1 to power off (SIGTERM).
pub fn report(settings: &BootSettings, sock: &Path) -> Result<(), ImageError> {
    let mut healthy = false;
    for path in ["/health", "/capacity"] {
        let (status, body) = http_get(sock, path, Duration::from_secs(30))?;
        say(&format!("GET {path} -> {status} {}", body.trim()));
        if path == "/health" {
            healthy = status == 200;
        }
    }
    if !healthy {
        return Err(ImageError::Http("the node daemon is not healthy".into()));
    }
    say("node ready");
    if settings.runmode == RunMode::Test {
        say("zos.runmode=test: powering off after the boot report");
        // SAFETY: kill(2) with integer arguments; PID 1 (zvm-init) powers off on SIGTERM.
        unsafe { libc::kill(1, libc::SIGTERM) };
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn serve_args_follow_zos_api() {
        let mut s = BootSettings::default();
        let args = serve_args(&s, Path::new(STATE_DIR), Path::new(API_SOCK));
        assert_eq!(
            args.join(" "),
            "node serve --state-dir /var/cache/zos/state --api-sock /run/zos/node.sock"
        );
        s.api = ApiSetting::Tcp("127.0.0.1:8080".parse().unwrap());
        assert!(serve_args(&s, Path::new("/s"), Path::new("/a"))
            .join(" ")
            .ends_with("--listen 127.0.0.1:8080"));
    }

    #[test]
    fn parses_responses() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n{}\r\nxx").unwrap();
        assert_eq!(r, (200, "{}\r\n".to_string()));
        let r = parse_response(b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!(r, (404, "abcde".to_string()));
        assert_eq!(
            parse_response(b"HTTP/1.0 204 No Content\r\n\r\n").unwrap(),
            (204, String::new())
        );
        for bad in [
            &b"garbage"[..],
            b"SSH-2.0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ] {
            assert!(
                parse_response(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn talks_to_a_unix_socket_server() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let n = conn.read(&mut buf).unwrap();
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /health HTTP/1.1\r\n"));
            conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{\"status\":\"ok\"}")
                .unwrap();
        });
        assert!(check(&sock));
        server.join().unwrap();
        assert!(!check(&dir.path().join("nobody.sock")));
    }
}
