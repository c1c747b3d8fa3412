//! The virtio-fs half of the snapshot test: host directories in the guest over virtio-fs,
//! snapshots of a VM with shares before and after its guest used them, and the clones'
//! virtiofsd (one per share and clone, given the saved state when there is one).

use super::{ANSWER_LIMIT, PORT};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use zvm_integration_tests::{processes_mentioning, vsock_request, LiveZvm};

/// What clone a's guest does with its shares (one shell command over vsock).
pub const USE_SHARES: &str = "mount -t virtiofs hostrw /mnt/rw && echo rw-share-mounted; \
    mount -t virtiofs hostro /mnt/ro && echo ro-share-mounted; \
    echo \"rw share says: $(cat /mnt/rw/hello.txt)\"; \
    echo \"ro share says: $(cat /mnt/ro/hello.txt)\"; \
    mkdir /mnt/rw/made-by-guest && echo written-by-guest > /mnt/rw/made-by-guest/note.txt && sync && echo rw-share-written; \
    if echo nope > /mnt/ro/from-guest.txt 2>/dev/null; then echo ro-share-write-succeeded; else echo ro-share-write-refused; fi; \
    if rm /mnt/ro/hello.txt 2>/dev/null; then echo ro-share-remove-succeeded; else echo ro-share-remove-refused; fi; \
    (exec 3>>/mnt/rw/count.txt; i=0; while true; do i=$((i+1)); echo $i >&3; sleep 1; done) </dev/null >/dev/null 2>&1 & \
    echo counter-started";

/// What clone b's guest does (less than clone a's: guest work is slow on PVM hosts).
pub const USE_RW_SHARE: &str = "mount -t virtiofs hostrw /mnt/rw && cat /mnt/rw/hello.txt \
    && echo written-by-b > /mnt/rw/from-b.txt && sync && umount /mnt/rw && echo clone-b-wrote";

/// What clone c (restored from a snapshot taken after [`USE_SHARES`]) checks: files its
/// guest had looked up, and the counter still writing through the file it held open.
const AFTER_RESTORE: &str = "echo \"rw: $(cat /mnt/rw/made-by-guest/note.txt)\"; \
    echo \"ro: $(cat /mnt/ro/hello.txt)\"; a=$(wc -l < /mnt/rw/count.txt); sleep 3; \
    b=$(wc -l < /mnt/rw/count.txt); if [ $b -gt $a ]; then echo counter-goes-on; fi; \
    echo fresh > /mnt/rw/from-c.txt && sync && echo clone-c-wrote";

/// The host directories of the test's shares.
pub struct ShareDirs {
    /// The base VM's read-write share.
    pub base_rw: PathBuf,
    /// The read-only share (every VM's).
    pub ro: PathBuf,
    /// Clone a's read-write share.
    pub rw_a: PathBuf,
    /// Clone b's read-write share.
    pub rw_b: PathBuf,
}

impl ShareDirs {
    /// Makes them under `dir`, each holding a `hello.txt` of its own.
    pub fn make(dir: &Path) -> ShareDirs {
        let share = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::create_dir_all(&path).expect("share dir");
            std::fs::write(path.join("hello.txt"), text).expect("host file");
            path
        };
        ShareDirs {
            base_rw: share("base-rw", "hello from the base VM's directory"),
            ro: share("ro-share", "hello from the host (ro)"),
            rw_a: share("clone-a-rw", "hello from clone a's directory"),
            rw_b: share("clone-b-rw", "hello from clone b's directory"),
        }
    }

    /// Configures both shares of the base VM through its API.
    pub fn attach(&self, base: &LiveZvm) {
        base.ok(
            "PUT",
            "/fs/rw",
            serde_json::json!({"fs_id": "rw", "tag": "hostrw", "shared_dir": self.base_rw}),
        );
        base.ok(
            "PUT",
            "/fs/readonly",
            serde_json::json!({"fs_id": "readonly", "tag": "hostro", "shared_dir": self.ro, "read_only": true}),
        );
    }
}

/// The virtio-fs devices' states in the snapshot at `state`: (tag, device state).
fn fs_states(state: &Path) -> Vec<vmm::devices::virtio::fs::FsState> {
    let saved = vmm::snapshot::read_state_file(state).expect("state file");
    saved
        .devices
        .virtio
        .iter()
        .filter_map(|t| match t.device.clone() {
            Some(vmm::devices::virtio::mmio::VirtioDeviceState::Fs(fs)) => Some(fs),
            _ => None,
        })
        .collect()
}

/// The base VM's snapshot: its guest probed both shares and mounted neither.
pub fn check_unused_shares_saved(state: &Path, show: &str) {
    let states = fs_states(state);
    let tags: Vec<&str> = states.iter().map(|f| f.tag.as_str()).collect();
    assert_eq!(tags, ["hostrw", "hostro"], "{show}");
    for fs in &states {
        assert!(
            fs.queues.len() == 2 && fs.queues.iter().all(|q| q.ready && q.next_avail == 0),
            "the driver set up both queues and sent nothing: {fs:?}"
        );
    }
}

/// Checks clone a's answer to [`USE_SHARES`] and what it left in its read-write
/// directory and the read-only one.
pub fn check_clone_a_used_its_shares(
    answer: &Result<String, String>,
    dirs: &ShareDirs,
    show: &str,
) {
    let answer = answer
        .as_deref()
        .unwrap_or_else(|e| panic!("clone a: {e}{show}"));
    for needle in [
        "rw-share-mounted",
        "ro-share-mounted",
        "rw share says: hello from clone a's directory",
        "ro share says: hello from the host (ro)",
        "rw-share-written",
        "ro-share-write-refused",
        "ro-share-remove-refused",
        "counter-started",
    ] {
        assert!(
            answer.contains(needle),
            "clone a lacks {needle:?}:\n{answer}{show}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(dirs.rw_a.join("made-by-guest/note.txt"))
            .ok()
            .as_deref(),
        Some("written-by-guest\n"),
        "clone a's file is in its own directory{show}"
    );
    assert!(!dirs.ro.join("from-guest.txt").exists());
    assert!(dirs.ro.join("hello.txt").exists());
    assert!(
        !dirs.base_rw.join("made-by-guest").exists(),
        "the base VM's directory was not written"
    );
}

/// Checks clone b's answer to [`USE_RW_SHARE`] and its file in its own directory.
pub fn check_clone_b_used_its_share(answer: &Result<String, String>, dirs: &ShareDirs, show: &str) {
    assert_eq!(
        answer.as_deref().map(str::trim),
        // hello.txt has no newline of its own.
        Ok("hello from clone b's directoryclone-b-wrote"),
        "{show}"
    );
    assert_eq!(
        std::fs::read_to_string(dirs.rw_b.join("from-b.txt"))
            .ok()
            .as_deref(),
        Some("written-by-b\n"),
        "{show}"
    );
}

/// Clone a, its guest having used its shares (mounted, files looked up, one held open by
/// the counter), is paused and snapshotted to `state` and `mem` with virtiofsd's state,
/// and goes on using its share. Returns how long the snapshot took and the saved states'
/// sizes.
pub fn snapshot_after_use(
    clone_a: &LiveZvm,
    uds_a: &Path,
    dirs: &ShareDirs,
    state: &Path,
    mem: &Path,
) -> (Duration, Vec<(String, usize)>) {
    clone_a.ok("PATCH", "/vm", serde_json::json!({"state": "Paused"}));
    let t = Instant::now();
    clone_a.ok(
        "PUT",
        "/snapshot/create",
        serde_json::json!({"snapshot_path": state, "mem_file_path": mem}),
    );
    let took = t.elapsed();
    clone_a.ok("PATCH", "/vm", serde_json::json!({"state": "Resumed"}));
    let carried: Vec<(String, usize)> = fs_states(state)
        .into_iter()
        .map(|fs| {
            let bytes = fs.backend_state.as_ref().map_or(0, Vec::len);
            (fs.tag, bytes)
        })
        .collect();
    assert!(
        carried.len() == 2 && carried.iter().all(|(_, bytes)| *bytes > 0),
        "both shares carry virtiofsd's state: {carried:?}"
    );
    let source = vsock_request(
        uds_a,
        PORT,
        "cat /mnt/rw/hello.txt && echo after > /mnt/rw/after-snapshot.txt && sync && echo ' source-goes-on'",
        ANSWER_LIMIT,
    );
    assert_eq!(
        source.as_deref().map(str::trim),
        Ok("hello from clone a's directory source-goes-on"),
        "{}",
        clone_a.show()
    );
    assert!(dirs.rw_a.join("after-snapshot.txt").exists());
    (took, carried)
}

/// Clone c, restored from clone a's snapshot after use on clone a's directories (the
/// snapshot's): its new virtiofsd take the saved state, and the guest finds the files it
/// knew and its counter writing on through the file it held open.
pub fn check_clone_c(clone_c: &LiveZvm, uds_c: &Path, dirs: &ShareDirs) {
    let lines = |path: &Path| std::fs::read_to_string(path).map_or(0, |s| s.lines().count());
    let counted = lines(&dirs.rw_a.join("count.txt"));
    let answer = vsock_request(uds_c, PORT, AFTER_RESTORE, ANSWER_LIMIT)
        .unwrap_or_else(|e| panic!("clone c: {e}{}", clone_c.show()));
    for needle in [
        "rw: written-by-guest",
        "ro: hello from the host (ro)",
        "counter-goes-on",
        "clone-c-wrote",
    ] {
        assert!(
            answer.contains(needle),
            "clone c lacks {needle:?}:\n{answer}{}",
            clone_c.show()
        );
    }
    assert!(
        lines(&dirs.rw_a.join("count.txt")) > counted,
        "the restored counter writes on the host"
    );
    assert!(dirs.rw_a.join("from-c.txt").exists());
}

/// Waits until no virtiofsd serves `dir` (a sandboxed virtiofsd's own child may take a
/// moment to follow its parent).
pub fn assert_no_virtiofsd_for(dir: &Path) {
    let needle = dir.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_mentioning(&needle) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !processes_mentioning(&needle),
        "a virtiofsd still serves {needle}"
    );
}
