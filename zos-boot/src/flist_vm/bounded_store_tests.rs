#![allow(clippy::unwrap_used)]

use super::*;
use oci_runtime::sandbox::share::overlay::OverlayDirs;
use std::io::Write;

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipping: a store's mount needs root");
    }
    root
}

fn tools() -> bool {
    let found = flist_fetcher::ext4::find_mkfs().is_some();
    if !found {
        eprintln!("skipping: mkfs.ext4 is not installed (apt-get install e2fsprogs)");
    }
    found
}

fn debugfs(image: &Path, request: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", request])
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes into `dir/name` until the file system says no; returns the error and the bytes
/// written.
fn fill(path: &Path) -> (std::io::Error, u64) {
    let mut file = File::create(path).unwrap();
    let chunk = vec![0x5au8; 64 << 10];
    let mut written = 0u64;
    loop {
        match file.write_all(&chunk).and_then(|()| file.sync_all()) {
            Ok(()) => written += chunk.len() as u64,
            Err(e) => return (e, written),
        }
        assert!(written < 64 << 20, "no limit reached");
    }
}

fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn sizes_are_checked_as_hostile_input() {
    for bad in [0, 1, MIN_SIZE - 1, MAX_SIZE + 1, u64::MAX] {
        let err = check_size("volumes[0].size", bad).unwrap_err().to_string();
        assert!(err.contains("out of range"), "{bad}: {err}");
        assert!(err.contains("volumes[0].size"), "{err}");
    }
    assert_eq!(check_size("x", MIN_SIZE).unwrap(), MIN_SIZE);
    assert_eq!(check_size("x", MAX_SIZE).unwrap(), MAX_SIZE);
    let dir = tempfile::tempdir().unwrap();
    let err = StoreImage::ensure(&dir.path().join("s.ext4"), 0, RootAttrs::default());
    assert!(err.is_err());
    assert!(!dir.path().join("s.ext4").exists());
}

#[test]
fn a_store_is_made_once_with_its_root_attributes_and_kept() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vol.ext4");
    let attrs = RootAttrs {
        uid: 1000,
        gid: 1001,
        mode: 0o1750,
    };
    let store = StoreImage::ensure(&path, 4 << 20, attrs).unwrap();
    assert_eq!(store.path(), path);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 4 << 20);
    // Sparse: mkfs wrote metadata only.
    assert!(allocated(&path) < 2 << 20, "{}", allocated(&path));
    let listing = debugfs(&path, "ls -l /");
    assert!(listing.contains("41750 (2)   1000   1001"), "{listing}");
    assert!(!listing.contains("lost+found"), "{listing}");
    // Made again: kept as it is (a restarted deployment keeps its data).
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(5 << 20)
        .unwrap();
    StoreImage::ensure(&path, 4 << 20, RootAttrs::default()).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 5 << 20);
    // No staging file is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["vol.ext4"]);
    // A symbolic link or a directory is not a store.
    std::os::unix::fs::symlink(&path, dir.path().join("link")).unwrap();
    assert!(StoreImage::ensure(&dir.path().join("link"), 4 << 20, attrs).is_err());
    assert!(StoreImage::open(dir.path()).is_err());
    assert!(StoreImage::open(&dir.path().join("missing")).is_err());
}

#[test]
fn one_vm_at_a_time_has_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.ext4");
    std::fs::write(&path, b"").unwrap();
    let store = StoreImage::open(&path).unwrap();
    let held = store.lock().unwrap();
    assert!(matches!(store.lock(), Err(StoreError::Busy(_))));
    drop(held);
    store.lock().unwrap();
}

#[test]
fn a_full_store_says_enospc_and_the_host_file_stays_within_its_size() {
    if !root() || !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.ext4");
    let size = 4 << 20;
    let store = StoreImage::ensure(&path, size, RootAttrs::default()).unwrap();
    let _lock = store.lock().unwrap();
    let mount = store.mount_detached().unwrap();
    let root = proc_path(&mount);
    let (err, written) = fill(&root.join("big"));
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert!(written > 1 << 20, "{written}");
    assert!(allocated(&path) <= size, "{}", allocated(&path));
    // Nothing in this process's (the host's) mount table.
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!table.contains(path.to_str().unwrap()));
    assert!(!table.contains(dir.path().to_str().unwrap()));
    // While it is mounted, a second mount waits for it to go, then gives up.
    let bound = loops_backed_by(&path);
    assert_eq!(bound.len(), 1, "{bound:?}");
    let started = std::time::Instant::now();
    let err = wait_for_release(&path, std::time::Duration::from_millis(300)).unwrap_err();
    assert!(matches!(err, StoreError::Busy(_)), "{err}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    // Space comes back when the file goes.
    std::fs::remove_file(root.join("big")).unwrap();
    std::fs::write(root.join("small"), b"kept").unwrap();
    drop(mount);
    // The loop device lets go once the mount is gone (a moment later).
    wait_for_release(&path, std::time::Duration::from_secs(10)).unwrap();
    // Mounted again, the data is there.
    let mount = store.mount_detached().unwrap();
    assert_eq!(
        std::fs::read(proc_path(&mount).join("small")).unwrap(),
        b"kept"
    );
}

#[test]
fn a_roots_writes_land_in_its_store_and_stop_at_its_size() {
    if !root() || !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lower = dir.path().join("tree");
    std::fs::create_dir_all(lower.join("etc")).unwrap();
    std::fs::write(lower.join("etc/os"), "flist\n").unwrap();
    let path = dir.path().join("root.ext4");
    let store = StoreImage::ensure(&path, 4 << 20, RootAttrs::default()).unwrap();
    let _lock = store.lock().unwrap();
    let mount = store.mount_detached().unwrap();
    let dirs = OverlayDirs::in_dir(&lower, &proc_path(&mount));
    dirs.create().unwrap();
    let overlay = match dirs.mount_detached() {
        Ok(o) => o,
        Err(e) => panic!("an overlay over a store needs Linux 6.15+: {e}"),
    };
    drop(mount);
    let merged = PathBuf::from(format!("/proc/self/fd/{}", overlay.as_raw_fd()));
    assert_eq!(
        std::fs::read_to_string(merged.join("etc/os")).unwrap(),
        "flist\n"
    );
    std::fs::write(merged.join("etc/os"), "mine\n").unwrap();
    let (err, _) = fill(&merged.join("big"));
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert!(allocated(&path) <= 4 << 20);
    // The lower tree is untouched.
    assert_eq!(
        std::fs::read_to_string(lower.join("etc/os")).unwrap(),
        "flist\n"
    );
    assert!(!lower.join("big").exists());
}

#[test]
fn image_volumes_are_mounted_for_the_share_and_held() {
    use crate::flist_vm::container::{add_volumes, mount_image_volumes, VolumeMount, IMAGE_OPTION};
    if !root() || !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("v.ext4");
    StoreImage::ensure(&image, 2 << 20, RootAttrs::default()).unwrap();
    let plain = dir.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    let volumes: Vec<VolumeMount> = [
        format!("{}:/data:image", image.display()),
        format!("{}:/plain", plain.display()),
    ]
    .iter()
    .map(|v| v.parse().unwrap())
    .collect();
    let mut spec = oci_spec::runtime::Spec::default();
    spec.set_mounts(Some(Vec::new()));
    add_volumes(&mut spec, &volumes);
    let mut again = spec.clone();
    let held = mount_image_volumes(&mut spec).unwrap();
    assert_eq!(held.len(), 1);
    let mounts = spec.mounts().clone().unwrap();
    let data = &mounts[0];
    let source = data.source().clone().unwrap();
    assert!(source.starts_with("/proc/self/fd/"), "{source:?}");
    assert!(!data
        .options()
        .clone()
        .unwrap()
        .iter()
        .any(|o| o == IMAGE_OPTION));
    std::fs::write(source.join("through"), b"the store").unwrap();
    assert_eq!(mounts[1].source().as_deref(), Some(plain.as_path()));
    // A second VM cannot have the same store meanwhile.
    let err = mount_image_volumes(&mut again).unwrap_err().to_string();
    assert!(err.contains("another VM uses it"), "{err}");
    drop(held);
    // A directory given as an image is refused.
    let mut bad = oci_spec::runtime::Spec::default();
    add_volumes(
        &mut bad,
        &[format!("{}:/d:image", plain.display()).parse().unwrap()],
    );
    assert!(mount_image_volumes(&mut bad).is_err());
}
