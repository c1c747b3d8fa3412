//! Host directories in a guest over virtio-fs: `zvm run --fs` starts a virtiofsd per
//! share, the project's kernel mounts them, and what the guest writes lands in the host
//! directory. One boot (boots are slow on KVM PVM hosts) checks a read-write and a
//! read-only share.

use std::path::Path;
use std::time::Duration;
use vmm::resources::DEFAULT_BOOT_ARGS;
use zvm_integration_tests::{busybox_initramfs, guest_kernel, run_zvm};

/// Upper bound for one boot here; a VMX host needs a fraction of a second.
const BOOT_LIMIT: Duration = Duration::from_secs(600);

/// The guest half, run by busybox's sh inside the VM.
const FS_SCRIPT: &str = r#"
dmesg -n 1
mkdir -p /mnt/rw /mnt/ro
mount -t virtiofs hostrw /mnt/rw && echo rw-share-mounted
mount -t virtiofs hostro /mnt/ro && echo ro-share-mounted
echo "rw share says: $(cat /mnt/rw/hello.txt)"
echo "ro share says: $(cat /mnt/ro/hello.txt)"
mkdir /mnt/rw/made-by-guest && echo written-by-guest > /mnt/rw/made-by-guest/note.txt && sync && echo rw-share-written
echo "listing: $(ls /mnt/rw | tr '\n' ' ')"
if echo nope > /mnt/ro/from-guest.txt 2>/dev/null; then echo ro-share-write-succeeded; else echo ro-share-write-refused; fi
if rm /mnt/ro/hello.txt 2>/dev/null; then echo ro-share-remove-succeeded; else echo ro-share-remove-refused; fi
umount /mnt/rw && umount /mnt/ro && echo shares-unmounted
"#;

/// Processes whose command line mentions `needle` (a share's directory: its virtiofsd).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(needle))
        .collect()
}

#[test]
fn zvm_run_shares_a_read_write_and_a_read_only_directory() {
    let dir = zvm_integration_tests::scratch_dir().join("virtio-fs");
    let rw = dir.join("rw-share");
    let ro = dir.join("ro-share");
    for (share, text) in [
        (&rw, "hello from the host (rw)"),
        (&ro, "hello from the host (ro)"),
    ] {
        std::fs::create_dir_all(share).expect("share dir");
        std::fs::write(share.join("hello.txt"), text).expect("host file");
    }
    let initrd = busybox_initramfs(FS_SCRIPT);
    let kernel = guest_kernel();
    let cmdline = format!("{DEFAULT_BOOT_ARGS} zvm.mode=script zvm.end=poweroff");
    let rw_fs = format!("tag=hostrw,path={}", rw.display());
    let ro_fs = format!("tag=hostro,path={},readonly=on,id=readonly", ro.display());
    let args = [
        "run",
        "--kernel",
        kernel.to_str().expect("utf8"),
        "--initrd",
        initrd.to_str().expect("utf8"),
        "--memory",
        "256M",
        "--cmdline",
        &cmdline,
        "--fs",
        &rw_fs,
        "--fs",
        &ro_fs,
    ];
    let run = run_zvm(&args, BOOT_LIMIT);
    let console = &run.stdout;
    let show = || {
        format!(
            "exit {:?}\nstderr:\n{}\nconsole tail:\n{}",
            run.code,
            run.stderr,
            console
                .lines()
                .rev()
                .take(80)
                .collect::<Vec<_>>()
                .join("\n")
        )
    };
    for needle in [
        "rw-share-mounted",
        "ro-share-mounted",
        "rw share says: hello from the host (rw)",
        "ro share says: hello from the host (ro)",
        "rw-share-written",
        "ro-share-write-refused",
        "ro-share-remove-refused",
        "shares-unmounted",
        "zvm-guest: script exited with 0",
    ] {
        assert!(
            console.contains(needle),
            "console lacks {needle:?}: {}",
            show()
        );
    }
    assert!(run.stderr.contains("zvm: guest powered off"), "{}", show());
    assert_eq!(run.code, Some(0), "{}", show());
    assert!(!run.stderr.contains("broken"), "{}", show());

    // What the guest wrote is in the host directory; the read-only share is untouched.
    let note = std::fs::read_to_string(rw.join("made-by-guest/note.txt"))
        .unwrap_or_else(|e| panic!("the guest's file is not on the host ({e}): {}", show()));
    assert_eq!(note, "written-by-guest\n");
    let ro_names: Vec<_> = std::fs::read_dir(&ro)
        .expect("ro share")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(ro_names, ["hello.txt"], "{}", show());
    assert_eq!(
        std::fs::read_to_string(ro.join("hello.txt")).expect("ro file"),
        "hello from the host (ro)"
    );

    // zvm stopped the daemons it started (a sandboxed virtiofsd's own child may take a
    // moment to follow its parent).
    for share in [&rw, &ro] {
        let needle = share.display().to_string();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !processes_mentioning(&needle).is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let left = processes_mentioning(&needle);
        assert!(left.is_empty(), "virtiofsd still runs: {left:?}");
    }
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}
