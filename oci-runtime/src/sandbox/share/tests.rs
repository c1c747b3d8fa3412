use super::host::{prepare, ShareCache};
use super::*;
use oci_spec::runtime::{Mount, MountBuilder, SpecBuilder};
use std::path::Path;
use std::process::Command;

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
        .unwrap()
}

fn spec(mounts: Vec<Mount>) -> Spec {
    SpecBuilder::default().mounts(mounts).build().unwrap()
}

fn podman_like() -> Spec {
    spec(vec![
        mount("/proc", "proc", "proc", &["nosuid"]),
        mount(
            "/etc/hosts",
            "bind",
            "/run/pod/hosts",
            &["bind", "rprivate"],
        ),
        mount("/data", "none", "data", &["rbind", "ro"]),
        mount("/dev/null-copy", "bind", "/dev/null", &["bind"]),
        mount("/w", "bind", "/srv/w", &["rbind", "ro", "rw"]),
    ])
}

#[test]
fn binds_are_planned_into_the_share_and_the_spec_rewritten() {
    let plan = plan_share(&podman_like(), Path::new("/bundle"), None);
    assert!(plan.needed() && !plan.rootfs_shared);
    let entries: Vec<_> = plan
        .entries
        .iter()
        .map(|e| {
            (
                e.name.as_str(),
                e.source.to_str().unwrap(),
                e.read_only,
                e.recursive,
            )
        })
        .collect();
    assert_eq!(
        entries,
        [
            ("m1", "/run/pod/hosts", false, false),
            // A relative source is the bundle's.
            ("m2", "/bundle/data", true, true),
            ("m4", "/srv/w", false, true),
        ]
    );
    let sources: Vec<_> = plan
        .spec
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| m.source().clone().unwrap().display().to_string())
        .collect();
    assert_eq!(
        sources,
        [
            "proc",
            "/run/zvm/share/m1",
            "/run/zvm/share/m2",
            // The VM's own /dev/null.
            "/dev/null",
            "/run/zvm/share/m4",
        ]
    );
    assert_eq!(plan.guest_rootfs(), None);
}

#[test]
fn the_root_is_an_entry_when_it_comes_over_virtio_fs() {
    let plan = plan_share(
        &spec(Vec::new()),
        Path::new("/b"),
        Some(Path::new("/b/rootfs")),
    );
    assert!(plan.needed() && plan.rootfs_shared);
    assert_eq!(plan.entries[0].name, ROOT_ENTRY);
    assert!(!plan.entries[0].read_only);
    assert_eq!(
        plan.guest_rootfs().as_deref(),
        Some("/run/zvm/share/rootfs")
    );
    // No binds and an image root: no share at all.
    let proc_only = spec(vec![mount("/proc", "proc", "proc", &[])]);
    assert!(!plan_share(&proc_only, Path::new("/b"), None).needed());
    // podman's masks with the VM's own /dev/null need no share (nor its template flavour).
    let masks = spec(vec![
        mount("/etc/hostname", "bind", "/dev/null", &["bind", "ro"]),
        mount("/run/.containerenv", "bind", "/dev/null", &["bind", "ro"]),
    ]);
    assert!(!plan_share(&masks, Path::new("/b"), None).needed());
}

#[test]
fn the_rootfs_mode_comes_from_the_annotation_then_the_environment() {
    let mut s = spec(Vec::new());
    assert_eq!(RootfsMode::of(&s, None).unwrap(), RootfsMode::Image);
    assert_eq!(RootfsMode::of(&s, Some("")).unwrap(), RootfsMode::Image);
    assert_eq!(
        RootfsMode::of(&s, Some("virtiofs")).unwrap(),
        RootfsMode::Virtiofs
    );
    let err = RootfsMode::of(&s, Some("nfs")).unwrap_err().to_string();
    assert!(err.contains("ZVM_ROOTFS=\"nfs\""), "{err}");
    s.set_annotations(Some(
        [(ANNOTATION_ROOTFS.to_string(), "image".to_string())].into(),
    ));
    assert_eq!(
        RootfsMode::of(&s, Some("virtiofs")).unwrap(),
        RootfsMode::Image
    );
    s.set_annotations(Some(
        [(ANNOTATION_ROOTFS.to_string(), "9p".to_string())].into(),
    ));
    assert!(RootfsMode::of(&s, None).is_err());
}

fn entry(name: &str, source: &Path, read_only: bool) -> ShareEntry {
    ShareEntry {
        name: name.into(),
        source: source.to_path_buf(),
        destination: PathBuf::from("/dest").join(name),
        read_only,
        recursive: true,
    }
}

#[test]
fn preparation_makes_a_placeholder_of_each_kind() {
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (dir, file) = (tmp.path().join("dir"), tmp.path().join("file"));
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(&file, b"x").unwrap();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&dir, &link).unwrap();
    let share_dir = tmp.path().join("share");
    std::fs::create_dir_all(share_dir.join("stale")).unwrap();
    let prepared = prepare(
        &share_dir,
        &[
            entry("m0", &dir, false),
            entry("m1", &file, true),
            // A symbolic link is followed on the host (its target is a directory).
            entry("m2", &link, false),
        ],
    )
    .unwrap();
    assert_eq!(prepared.dir(), share_dir);
    assert!(share_dir.join("m0").is_dir());
    assert!(share_dir.join("m1").is_file());
    assert_eq!(std::fs::read(share_dir.join("m1")).unwrap(), b"");
    assert!(share_dir.join("m2").is_dir());
    assert!(!share_dir.join("stale").exists(), "the old share is gone");
}

#[test]
fn hostile_sources_are_refused_before_anything_is_made() {
    let tmp = tempfile::tempdir().unwrap();
    let share_dir = tmp.path().join("share");
    let fifo = tmp.path().join("fifo");
    let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    let socket = tmp.path().join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let dangling = tmp.path().join("dangling");
    std::os::unix::fs::symlink(tmp.path().join("gone"), &dangling).unwrap();
    let cases: [(&Path, &str); 5] = [
        (&fifo, "is a FIFO"),
        (&socket, "is a socket"),
        (Path::new("/dev/null"), "is a character device"),
        (&dangling, "does not exist on the host"),
        (&tmp.path().join("missing"), "does not exist on the host"),
    ];
    for (source, expected) in cases {
        let err = prepare(&share_dir, &[entry("m0", source, false)])
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{source:?}: {err}");
        assert!(err.contains("/dest/m0"), "names the destination: {err}");
        assert!(!share_dir.exists(), "nothing made for {source:?}");
    }
}

/// Mounting needs root (a mount namespace of one's own).
fn can_mount() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipping: binding sources into a share needs root");
    }
    root
}

#[test]
fn read_only_entries_are_read_only_on_the_host_side() {
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (rw, ro, file) = (
        tmp.path().join("rw"),
        tmp.path().join("ro"),
        tmp.path().join("hosts"),
    );
    std::fs::create_dir(&rw).unwrap();
    std::fs::create_dir(&ro).unwrap();
    std::fs::write(ro.join("old"), b"kept").unwrap();
    std::fs::write(&file, b"127.0.0.1 box\n").unwrap();
    let share_dir = tmp.path().join("share");
    let prepared = prepare(
        &share_dir,
        &[
            entry("m0", &rw, false),
            entry("m1", &ro, true),
            ShareEntry {
                recursive: false,
                ..entry("m2", &file, true)
            },
        ],
    )
    .unwrap();
    let script = "echo new > m0/new && cat m1/old && cat m2 && \
                  if echo x > m1/x 2>/dev/null; then echo WROTE; fi; \
                  if echo x >> m2 2>/dev/null; then echo WROTE; fi; \
                  if rm m1/old 2>/dev/null; then echo REMOVED; fi";
    let out = prepared
        .command(Path::new("/bin/sh"))
        .args(["-c", script])
        .current_dir(&share_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout, "kept127.0.0.1 box\n", "{out:?}");
    // The write went through to the read-write source; the host's own view of the share
    // has only the placeholders (the mounts were the command's alone).
    assert_eq!(std::fs::read_to_string(rw.join("new")).unwrap(), "new\n");
    assert!(std::fs::read_dir(share_dir.join("m0"))
        .unwrap()
        .next()
        .is_none());
    assert!(!ro.join("x").exists());
    let status = Command::new("findmnt")
        .arg(share_dir.join("m0"))
        .output()
        .map(|o| o.status.success());
    assert_ne!(status.ok(), Some(true), "no host mount left behind");
}

#[test]
fn a_source_that_vanishes_after_preparation_is_still_the_one_checked() {
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("vol");
    std::fs::create_dir(&source).unwrap();
    std::fs::write(source.join("a"), b"checked").unwrap();
    let share_dir = tmp.path().join("share");
    let prepared = prepare(&share_dir, &[entry("m0", &source, false)]).unwrap();
    // Swapped for a link to somewhere else after the check: the copy made at the check
    // is what gets mounted, not what the path names now.
    std::fs::rename(&source, tmp.path().join("moved")).unwrap();
    std::os::unix::fs::symlink("/etc", &source).unwrap();
    let out = prepared
        .command(Path::new("/bin/sh"))
        .args(["-c", "cat m0/a; ls m0"])
        .current_dir(&share_dir)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "checkeda\n",
        "{out:?}"
    );
}

#[test]
fn a_virtiofsd_that_does_not_start_is_a_clear_error() {
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("virtiofsd.log");
    let start = |binary: &Path| {
        let prepared = prepare(&tmp.path().join("share"), &[]).unwrap();
        super::host::Virtiofsd::start(binary, prepared, &log)
            .unwrap_err()
            .to_string()
    };
    let err = start(Path::new("/bin/false"));
    assert!(
        err.contains("exited") && err.contains("before it listened"),
        "{err}"
    );
    let err = start(&tmp.path().join("no-virtiofsd"));
    assert!(err.contains("cannot start"), "{err}");
}

/// Containers' shares keep their files' extended attributes (file capabilities), as runc's
/// rootfs does: virtiofsd runs with `--xattr`, which the installed one accepts.
#[test]
fn container_shares_run_virtiofsd_with_xattr() {
    let args = virtiofsd_args(ShareCache::Auto);
    assert_eq!(
        args[..4],
        ["--shared-dir", "/b/share", "--socket-path", "/s/fs.sock"]
    );
    assert!(args.iter().any(|a| a == "--xattr"), "{args:?}");
    assert!(
        args.windows(2).any(|w| w == ["--sandbox", "namespace"]),
        "{args:?}"
    );
    assert!(
        args.windows(2).any(|w| w == ["--cache", "auto"]),
        "{args:?}"
    );
    let Ok(binary) = super::host::find_virtiofsd() else {
        eprintln!("skipped starting virtiofsd: none installed");
        return;
    };
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let prepared = prepare(&tmp.path().join("share"), &[]).unwrap();
    let log = tmp.path().join("virtiofsd.log");
    super::host::Virtiofsd::start(&binary, prepared, &log)
        .unwrap_or_else(|e| panic!("virtiofsd --xattr: {e}"));
    // The guest's cache of a share only it changes: the installed virtiofsd takes it too.
    let prepared = prepare(&tmp.path().join("own"), &[]).unwrap();
    let prepared = prepared.with_cache(ShareCache::Exclusive);
    assert_eq!(prepared.cache(), ShareCache::Exclusive);
    super::host::Virtiofsd::start(&binary, prepared, &log)
        .unwrap_or_else(|e| panic!("virtiofsd --cache always: {e}"));
}

fn virtiofsd_args(cache: ShareCache) -> Vec<String> {
    super::host::virtiofsd_args(Path::new("/b/share"), Path::new("/s/fs.sock"), cache)
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

/// A share the guest alone changes lets it keep what it read (`--cache always`); one with
/// any host file others may change keeps close-to-open consistency (`--cache auto`).
#[test]
fn a_share_is_cached_by_the_guest_only_when_it_owns_every_entry() {
    let entry = |source: &str| ShareEntry {
        name: "m0".into(),
        source: source.into(),
        destination: "/v".into(),
        read_only: false,
        recursive: false,
    };
    let store = Path::new("/proc/self/fd/7");
    assert_eq!(ShareCache::for_entries(&[], &[]), ShareCache::Exclusive);
    assert_eq!(
        ShareCache::for_entries(&[entry("/proc/self/fd/7")], &[store]),
        ShareCache::Exclusive
    );
    assert_eq!(
        ShareCache::for_entries(&[entry("/proc/self/fd/7"), entry("/srv/v")], &[store]),
        ShareCache::Auto
    );
    assert_eq!(
        ShareCache::for_entries(&[entry("/srv/v")], &[]),
        ShareCache::Auto
    );
    assert_eq!(ShareCache::default(), ShareCache::Auto);
    let args = virtiofsd_args(ShareCache::Exclusive);
    assert!(
        args.windows(2).any(|w| w == ["--cache", "always"]),
        "{args:?}"
    );
}
