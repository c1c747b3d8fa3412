//! The node boot image (issue #8): `zvm node image -o DIR` builds it; it boots under zvm
//! with a blank disk, its service manager formats the disk, creates the node identity,
//! starts the node daemon, and the boot reporter prints `/health` and `/capacity`
//! (which says /dev/kvm is unusable inside the guest, and why); a second boot with the
//! same disk reuses it and keeps the node id. Two boots: slow on PVM hosts.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use vmm::resources::DEFAULT_BOOT_ARGS;
use zvm_integration_tests::{
    guest_kernel, read_from_ext4, repo_root, run_zvm, scratch_dir, zvm_binary, ZvmRun,
};

/// Upper bound for one node boot here (a VMX host needs seconds).
const BOOT_LIMIT: Duration = Duration::from_secs(900);

/// The static zvm (and zvm-init beside it), from zos-boot/build.sh.
fn static_zvm() -> PathBuf {
    let script = repo_root().join("zos-boot/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .expect("run zos-boot/build.sh");
    assert!(
        out.status.success(),
        "zos-boot/build.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = PathBuf::from(stdout.lines().last().expect("a path").trim());
    assert!(
        path.is_file() && path.with_file_name("zvm-init").is_file(),
        "{} or zvm-init beside it is missing",
        path.display()
    );
    path
}

fn build_image(out: &Path) -> String {
    let zvm = static_zvm();
    let run = Command::new(zvm_binary())
        .args(["node", "image", "-o"])
        .arg(out)
        .arg("--kernel")
        .arg(guest_kernel())
        .arg("--zvm")
        .arg(&zvm)
        .arg("--init")
        .arg(zvm.with_file_name("zvm-init"))
        // No compression: the guest kernel's inflate is emulated on PVM hosts; even stored
        // gzip blocks cost a third of the unpacking time there.
        .arg("--uncompressed")
        .output()
        .expect("run zvm node image");
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "zvm node image failed: {}\n{stdout}",
        String::from_utf8_lossy(&run.stderr)
    );
    stdout
}

fn boot(dir: &Path, disk: &Path) -> ZvmRun {
    let cmdline = format!("{DEFAULT_BOOT_ARGS} zos.runmode=test");
    let kernel = dir.join("vmlinux");
    let initrd = dir.join("initramfs.cpio");
    let disk_spec = format!("path={}", disk.display());
    let args = [
        "run",
        "--kernel",
        kernel.to_str().expect("utf8"),
        "--initrd",
        initrd.to_str().expect("utf8"),
        "--disk",
        &disk_spec,
        // 256 MiB: the kernel initialises and frees the page structures of all of it
        // (~7 s per 256 MiB where guest kernel code is emulated); the node's 16 MB image and
        // its daemon fit.
        "--memory",
        "256M",
        // One vCPU: the suite runs this test beside another one-vCPU guest
        // (.config/nextest.toml). Two save ~15 s of a ~190 s boot here (the kernel's
        // unpacking of the initramfs, most of it the static zvm, overlaps the rest of its
        // start-up) but would have this test run alone.
        "--cpus",
        "1",
        "--cmdline",
        &cmdline,
    ];
    run_zvm(&args, BOOT_LIMIT)
}

fn show(run: &ZvmRun) -> String {
    let tail: Vec<&str> = run.stdout.lines().rev().take(60).collect();
    format!(
        "exit {:?}\nstderr:\n{}\nconsole tail:\n{}",
        run.code,
        run.stderr,
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    )
}

/// The value after `prefix` on the console line that starts with it.
fn console_value<'a>(run: &'a ZvmRun, prefix: &str) -> &'a str {
    let line = run
        .stdout
        .lines()
        .find_map(|l| l.split_once(prefix).map(|(_, rest)| rest));
    line.unwrap_or_else(|| panic!("console lacks {prefix:?}: {}", show(run)))
        .trim()
}

/// Checks one boot; returns the node id it printed.
fn check_boot(run: &ZvmRun, first: bool) -> String {
    let needles = [
        "zvm-init: 3 services from /etc/zinit",
        "zvm-init: started storage",
        "zvm-init: storage done",
        "zos: /dev/vda mounted on /var/cache/zos",
        "zvm-init: node is up (test passed)",
        "zos: node ready",
        "zvm-init: all services stopped",
    ];
    for needle in needles {
        assert!(
            run.stdout.contains(needle),
            "console lacks {needle:?}: {}",
            show(run)
        );
    }
    let formatting = "zos: first boot: formatting /dev/vda as ext4";
    let reusing = "zos: reusing the cache disk /dev/vda";
    if first {
        assert!(
            run.stdout.contains(formatting) && !run.stdout.contains(reusing),
            "{}",
            show(run)
        );
    } else {
        assert!(
            run.stdout.contains(reusing) && !run.stdout.contains(formatting),
            "{}",
            show(run)
        );
    }
    // The daemon answered, through the reporter, on the console.
    let health = console_value(run, "zos: GET /health -> ");
    assert!(health.starts_with("200 "), "{health}");
    let capacity = console_value(run, "zos: GET /capacity -> ");
    let (status, body) = capacity.split_once(' ').expect("status and body");
    assert_eq!(status, "200", "{capacity}");
    let json: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("capacity is not JSON ({e}): {body}"));
    assert_eq!(
        json["kvm"]["usable"],
        serde_json::Value::Bool(false),
        "no nested virtualization in the guest: {body}"
    );
    let reason = json["kvm"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("/dev/kvm"),
        "the capacity says why KVM is unusable: {body}"
    );
    assert!(!run.stdout.contains("FAILED"), "{}", show(run));
    assert_eq!(
        run.code,
        Some(0),
        "the node powered off cleanly: {}",
        show(run)
    );
    let id = console_value(run, "zos: node id ");
    let id = id.split_whitespace().next().unwrap_or_default().to_string();
    assert!(
        id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "node id {id:?}"
    );
    let health: serde_json::Value = serde_json::from_str(health.trim_start_matches("200 "))
        .unwrap_or_else(|e| panic!("health is not JSON ({e}): {health}"));
    assert_eq!(
        health["node_id"],
        id.as_str(),
        "the daemon knows the node id"
    );
    assert_eq!(
        run.stdout.contains(&format!("zos: node id {id} (new)")),
        first,
        "only the first boot makes a key: {}",
        show(run)
    );
    id
}

#[test]
fn node_image_boots_formats_its_disk_and_keeps_its_identity() {
    let dir = scratch_dir().join("node-image");
    let listing = build_image(&dir);
    for file in [
        "/sbin/init",
        "/usr/bin/zvm",
        "/sbin/mke2fs",
        "/sbin/mkfs.ext4",
        "/etc/zinit/storage.yaml",
        "/etc/zinit/node.yaml",
        "/etc/zinit/report.yaml",
        "/lib64/ld-linux-x86-64.so.2",
    ] {
        assert!(
            listing.split_whitespace().any(|f| f == file),
            "the image lacks {file}: {listing}"
        );
    }
    let cpio = std::fs::read(dir.join("initramfs.cpio")).expect("initramfs");
    assert_eq!(&cpio[..6], b"070701", "a plain newc archive");
    assert!(
        !dir.join("initramfs.cpio.gz").exists(),
        "one initramfs in the image directory"
    );

    let disk = scratch_dir().join("node-disk.img");
    let f = std::fs::File::create(&disk).expect("create disk");
    f.set_len(256 << 20).expect("sparse 256 MiB");
    drop(f);

    let first = boot(&dir, &disk);
    let id = check_boot(&first, true);
    // The key and id are on the disk, seen from the host.
    assert_eq!(read_from_ext4(&disk, "identity/node.pub").trim(), id);

    let second = boot(&dir, &disk);
    assert_eq!(check_boot(&second, false), id, "same disk, same node id");
}

#[test]
fn node_image_refuses_bad_inputs() {
    let dir = scratch_dir().join("node-image-bad");
    let run = |extra: &[&str]| {
        let out = Command::new(zvm_binary())
            .args(["node", "image", "-o"])
            .arg(&dir)
            .args(extra)
            .output()
            .expect("run zvm");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&[
        "--kernel", "/bin/sh", "--zvm", "/bin/sh", "--init", "/bin/sh",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("/bin/sh is dynamically linked") && err.contains("zos-boot/build.sh"),
        "{err}"
    );
    let (code, err) = run(&[
        "--kernel",
        "/bin/sh",
        "--zvm",
        "/nonexistent/zvm",
        "--init",
        "/bin/sh",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("/nonexistent/zvm"), "{err}");
    // An uncompressed image has no gzip level.
    let (code, err) = run(&["--uncompressed", "--gzip-level", "3"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("'--uncompressed' cannot be used with '--gzip-level"),
        "{err}"
    );
}
