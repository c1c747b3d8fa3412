//! `zvm run --flist` of a container flist, as a developer runs it (issue #8): the flist is a
//! busybox root file system this test packs into a `dir://` store; zvm runs the entrypoint
//! through the OCI guest agent, PID 1 of a VM of the project's kernel restored from the
//! template of its shape (issue #13; the run's share template, which the container engines'
//! tests made before this one, or made here when run alone). It checks: the entrypoint reads
//! zvm's stdin, zvm's stdout and stderr are exactly the entrypoint's (issue #19: the guest
//! console and zvm's own messages go to the `--console file:` log, which says the VM was
//! restored from a template), `--env` and `--hostname` reach it, and zvm exits with the
//! entrypoint's exit status. (A data disk would be a template shape of its own, one boot
//! more: the node daemon's test covers data disks in clones.)
//! zvm runs its VMM jailed by default for a flist (issue #16): while the guest runs, the
//! jailed VMM is checked from the host before the entrypoint gets its line. The container's
//! root comes over virtio-fs (issue #14): the flist unpacked once in the cache, the run's
//! writes in its own upper layer (the cache's tree stays as it was), and a `--volume` host
//! directory is shared too (the guest reads the host's file and writes one the host reads);
//! nothing stays mounted or running afterwards. The root's writes and an `:image` volume are
//! bounded stores of 2 MiB: past it the guest gets ENOSPC and carries on (the host's file
//! never grows past its size).

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use zvm_integration_tests::{
    busybox_rootfs, ext4_image, guest_init, guest_kernel, pack_flist, run_to_end, scratch_dir,
    zvm_binary,
};

#[test]
fn zvm_run_flist_runs_a_container_entrypoint_through_the_guest_agent() {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        eprintln!("skipped: /dev/kvm is not usable here");
        return;
    }
    assert!(
        guest_init().with_file_name("zvm-oci-agent").is_file(),
        "guest/build.sh did not build zvm-oci-agent"
    );
    let dir = scratch_dir().join("run-flist");
    let _ = std::fs::remove_dir_all(&dir);
    let rootfs = dir.join("rootfs");
    busybox_rootfs(&rootfs, &["tmp"]);
    let flist = dir.join("tiny.fl");
    pack_flist(&rootfs, &dir.join("store"), &flist);
    let volume = dir.join("volume");
    std::fs::create_dir_all(&volume).expect("volume dir");
    std::fs::write(volume.join("in.txt"), "from-the-host\n").expect("volume file");
    // A bounded volume (an ext4 store, as the node makes them) of 2 MiB; the root's store
    // is 2 MiB too (--root-size).
    let bounded = dir.join("bounded.ext4");
    ext4_image(&bounded, 2, &[]);

    // Shell built-ins where they do (`read` for `cat`): over a share with a host directory
    // every exec reads busybox anew, seconds each where guest kernel code is emulated.
    let entrypoint =
        "/bin/sh -c 'read line; echo GOT-$line; echo ENV-$GREETING; \
                      read h < /proc/sys/kernel/hostname; echo HOST-$h; \
                      read v < /vol/in.txt; echo VOL-$v; \
                      echo guest-wrote > /vol/out.txt; echo cow > /cow-note; \
                      grep -q \" / virtiofs \" /proc/mounts && read c < /cow-note && echo ROOT-VIRTIOFS-$c; \
                      case $(dd if=/dev/zero of=/fill bs=64k count=64 2>&1) in *\"No space left\"*) echo ROOT-ENOSPC;; esac; \
                      rm -f /fill; echo again > /after && read a < /after && echo ROOT-WRITABLE-$a; \
                      case $(dd if=/dev/zero of=/bounded/fill bs=64k count=64 2>&1) in *\"No space left\"*) echo VOL-ENOSPC;; esac; \
                      rm -f /bounded/fill; echo kept > /bounded/kept; \
                      echo to-stderr >&2; exit 7'";
    let console = dir.join("console.log");
    let mut command = Command::new(zvm_binary());
    command
        .args(["run", "--flist"])
        .arg(&flist)
        .arg("--flist-cache")
        .arg(dir.join("cache"))
        .arg("--kernel")
        .arg(guest_kernel())
        .args([
            "--entrypoint",
            entrypoint,
            "--env",
            "GREETING=hi there",
            "--hostname",
            "devbox",
        ])
        .arg("--console")
        .arg(format!("file:{}", console.display()))
        .arg("--volume")
        .arg(format!("{}:/vol", volume.display()))
        .arg("--volume")
        .arg(format!("{}:/bounded:image", bounded.display()))
        .args(["--root-size", "2097152"]);
    // The entrypoint's line is written once the jailed VMM has been looked at.
    let trees_dir = dir.join("cache/trees");
    let (stdin, mut feed) = std::io::pipe().expect("stdin pipe");
    let inspector = std::thread::spawn(move || {
        // zvm's limits for a 256 MiB guest: RAM + 256 MiB, 256 tasks.
        let limits = jail::CgroupLimits {
            memory_bytes: 512 << 20,
            pids: 256,
            cpus: 2.0,
        };
        let checked = jail::inspect::wait_for_jailed(&zvm_binary(), Duration::from_secs(300))
            .and_then(|pid| jail::inspect::check_jailed(pid, &limits));
        // The running VM holds its lease on the cache's tree: no eviction may take it. The
        // jailed VMM found first may be the template's builder, before the flist's tree is
        // unpacked and leased; the container blocks on its stdin until this thread has
        // looked, so the lease, once it exists, is looked at while the VM runs.
        let tree_locks = || -> Vec<PathBuf> {
            std::fs::read_dir(&trees_dir)
                .map(|d| {
                    d.filter_map(Result::ok)
                        .map(|e| e.path())
                        // `<sha256>.lock`, not the cache-wide `.cache.lock`.
                        .filter(|p| {
                            p.extension().is_some_and(|x| x == "lock")
                                && !p
                                    .file_name()
                                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let held = |lock: &PathBuf| {
            Command::new("flock")
                .args(["-n", "-x"])
                .arg(lock)
                .arg("true")
                .status()
                .is_ok_and(|s| s.code() == Some(1))
        };
        let deadline = Instant::now() + Duration::from_secs(600);
        let leased = loop {
            let leased: Vec<bool> = tree_locks().iter().map(held).collect();
            if (!leased.is_empty() && leased.iter().all(|h| *h)) || Instant::now() > deadline {
                break leased;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let _ = feed.write_all(b"hello-from-stdin\n");
        (checked, leased)
    });
    // Generous: a boot takes about a minute on KVM PVM hosts, several on a loaded one.
    let run = run_to_end(&mut command, Stdio::from(stdin), Duration::from_secs(900));
    let (jailed, leased) = inspector.join().expect("inspector thread");
    let (stdout, stderr) = (&run.stdout, &run.stderr);
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    let show = format!("stdout:\n{stdout}\nstderr:\n{stderr}\nconsole log:\n{log}");
    let jailed =
        jailed.unwrap_or_else(|e| panic!("the VMM is not jailed as it should be: {e}\n{show}"));
    eprintln!(
        "jailed VMM: pid {}, uid {}, root holds {:?}",
        jailed.pid, jailed.uid, jailed.root_entries
    );
    assert_eq!(
        leased,
        [true],
        "the tree's lock is not held while the VM runs: {show}"
    );
    assert_eq!(
        stdout.as_str(),
        "GOT-hello-from-stdin\nENV-hi there\nHOST-devbox\n\
         VOL-from-the-host\nROOT-VIRTIOFS-cow\nROOT-ENOSPC\nROOT-WRITABLE-again\nVOL-ENOSPC\n",
        "stdout is the entrypoint's output alone: {show}"
    );
    assert_eq!(
        stderr.as_str(),
        "to-stderr\n",
        "stderr is the entrypoint's alone: {show}"
    );
    assert_eq!(
        run.code,
        Some(7),
        "zvm exits with the entrypoint's status: {show}"
    );
    // The guest console and zvm's own messages are in the log file instead. The VM is a
    // clone of the template of its shape (issue #13): no kernel boots. A host directory is
    // shared, so the guest's cache of the share keeps close-to-open consistency.
    for want in [
        "VM restored from template",
        "guest cache close-to-open (host files)",
        "zvm: the container's process exited with status 7",
    ] {
        assert!(log.contains(want), "the console log lacks {want:?}: {show}");
    }
    assert!(!log.contains("booting the kernel"), "{show}");
    assert!(
        !log.contains("GOT-hello-from-stdin"),
        "the container's output is not in the log: {show}"
    );
    // The work directory was temporary, and no temporary log was made.
    assert!(!Path::new(&format!("/tmp/zvm-flist-{}", run.pid)).exists());
    assert!(!Path::new(&format!("/tmp/zvm-flist-{}.log", run.pid)).exists());
    // The guest's write in the volume is on the host; its write in the root went to the
    // run's upper layer (gone with the temporary work directory), not to the cache's tree.
    assert_eq!(
        std::fs::read_to_string(volume.join("out.txt")).unwrap_or_default(),
        "guest-wrote\n",
        "{show}"
    );
    // The bounded volume kept the guest's file and never took more than its size.
    let kept = Command::new("debugfs")
        .args(["-R", "cat /kept"])
        .arg(&bounded)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    assert_eq!(kept, "kept\n", "{show}");
    let allocated = std::fs::metadata(&bounded).map_or(0, |m| m.blocks() * 512);
    assert!(allocated <= 2 << 20, "{allocated} bytes");
    // (The cache also holds the trees' lock and size files.)
    let trees: Vec<_> = std::fs::read_dir(dir.join("cache/trees"))
        .expect("the flist's tree in the cache")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(trees.len(), 1, "{trees:?}");
    assert!(trees[0].join("bin").is_dir(), "{trees:?}");
    assert!(
        !trees[0].join("cow-note").exists(),
        "the cache's tree was written"
    );
    // Nothing of the run stays mounted or running.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    assert!(!mounts.contains(dir.to_str().unwrap_or("?")), "{mounts}");
    assert!(
        !zvm_integration_tests::processes_mentioning(dir.to_str().unwrap_or("?")),
        "a process of the run is left"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
