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
use std::io::Write;
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
                disk::format(mkfs, disk, disk::CACHE_LABEL)?;
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

/// The `zvm node serve` arguments for this boot: the node id from `identity_dir`, and
/// for `zos.api=tcp:ADDR` the listen address (`--allow-remote` when ADDR is not
/// loopback; the caller then hands the daemon the token, see [`needs_token`]).
pub fn serve_args(
    settings: &BootSettings,
    state_dir: &Path,
    api_sock: &Path,
    identity_dir: &Path,
) -> Vec<String> {
    let mut args = vec![
        "node".to_string(),
        "serve".into(),
        "--state-dir".into(),
        state_dir.display().to_string(),
        "--api-sock".into(),
        api_sock.display().to_string(),
        "--node-id-file".into(),
        identity_dir.join("node.pub").display().to_string(),
    ];
    if let ApiSetting::Tcp(addr) = settings.api {
        args.push("--listen".into());
        args.push(addr.to_string());
        if needs_token(settings) {
            args.push("--allow-remote".into());
        }
    }
    args
}

/// Whether this boot serves the API beyond loopback, which takes a bearer token
/// ([`super::identity::api_token`]).
pub fn needs_token(settings: &BootSettings) -> bool {
    matches!(settings.api, ApiSetting::Tcp(addr) if !addr.ip().is_loopback())
}

/// One GET over the daemon's Unix socket: (status, body).
pub fn http_get(sock: &Path, path: &str, timeout: Duration) -> Result<(u16, String), ImageError> {
    let response = api_server::client::request(sock, "GET", path, None, timeout)
        .map_err(|e| ImageError::Http(e.to_string()))?;
    Ok((response.status, response.text()))
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
        let id = Path::new(IDENTITY_DIR);
        let args = serve_args(&s, Path::new(STATE_DIR), Path::new(API_SOCK), id);
        assert_eq!(
            args.join(" "),
            "node serve --state-dir /var/cache/zos/state --api-sock /run/zos/node.sock --node-id-file /var/cache/zos/identity/node.pub"
        );
        assert!(!needs_token(&s));
        s.api = ApiSetting::Tcp("127.0.0.1:8080".parse().unwrap());
        assert!(serve_args(&s, Path::new("/s"), Path::new("/a"), id)
            .join(" ")
            .ends_with("--listen 127.0.0.1:8080"));
        assert!(!needs_token(&s));
        s.api = ApiSetting::Tcp("0.0.0.0:8080".parse().unwrap());
        assert!(serve_args(&s, Path::new("/s"), Path::new("/a"), id)
            .join(" ")
            .ends_with("--listen 0.0.0.0:8080 --allow-remote"));
        assert!(needs_token(&s));
    }

    #[test]
    fn talks_to_a_unix_socket_server() {
        use std::io::Read;
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
