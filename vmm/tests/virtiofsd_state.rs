//! A snapshot's virtiofsd state that is corrupt or truncated, loaded into a real virtiofsd
//! (the one zvm uses): refused at restore with a clear error, in bounded time. Needs
//! virtiofsd ($ZVM_VIRTIOFSD, or zvm's cache: `bash scripts/install-virtiofsd.sh`) and
//! root (its namespace sandbox); without them the test says why and passes.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vmm::devices::virtio::fs::{Fs, FsState, FS_STATE_VERSION};
use vmm::devices::virtio::mmio::VirtioDeviceState;
use vmm::devices::virtio::VirtioDevice;

fn virtiofsd() -> Option<PathBuf> {
    let explicit = std::env::var_os("ZVM_VIRTIOFSD").map(PathBuf::from);
    let cached = std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".cache/zvm/virtiofsd/bin/virtiofsd"));
    explicit.into_iter().chain(cached).find(|p| p.is_file())
}

/// A virtiofsd serving `dir`, killed when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(binary: &PathBuf, dir: &std::path::Path, socket: &std::path::Path) -> Daemon {
    let child = Command::new(binary)
        .arg("--shared-dir")
        .arg(dir)
        .arg("--socket-path")
        .arg(socket)
        .args(["--sandbox", "namespace", "--log-level", "error"])
        .args(vmm::devices::virtio::fs::VIRTIOFSD_MIGRATION_ARGS)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start virtiofsd");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "virtiofsd did not listen");
        std::thread::sleep(Duration::from_millis(10));
    }
    Daemon(child)
}

#[test]
fn corrupt_or_truncated_virtiofsd_state_is_refused_by_a_real_virtiofsd() {
    let Some(binary) = virtiofsd() else {
        eprintln!("skipped: no virtiofsd (bash scripts/install-virtiofsd.sh installs it)");
        return;
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: virtiofsd's namespace sandbox needs root here");
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).expect("shared dir");
    let mem = vmm::memory::create_shared_guest_memory(4 << 20).expect("memory");
    // virtiofsd's state starts with a serialization header; these are not it.
    let garbage = b"not virtiofsd's state at all, just bytes".to_vec();
    let truncated = vec![0x01, 0x00];
    for (what, bytes) in [("garbage", garbage), ("truncated", truncated)] {
        let socket = dir.path().join(format!("{what}.sock"));
        let _daemon = start(&binary, &shared, &socket);
        let mut fs = Fs::connect("data", "hostdata", 1, &socket).expect("connect");
        let state = FsState {
            version: FS_STATE_VERSION,
            tag: "hostdata".into(),
            request_queues: 1,
            driver_features: 0,
            queues: Vec::new(),
            backend_state: Some(bytes),
        };
        let start = Instant::now();
        let err = fs
            .restore_device_state(&VirtioDeviceState::Fs(state), &mem)
            .expect_err(what);
        assert!(start.elapsed() < Duration::from_secs(15), "{what}: bounded");
        assert!(
            err.contains("share 'data'")
                && err.contains("did not take the snapshot's state")
                && err.contains("CHECK_DEVICE_STATE"),
            "{what}: {err}"
        );
        eprintln!("{what}: {err}");
    }
}
