#![allow(clippy::unwrap_used)]

use super::*;
use crate::node::spec::WorkloadSpec;
use crate::node::store::{Address, DeploymentState};

#[test]
fn the_vm_command_carries_the_whole_spec() {
    let spec = WorkloadSpec::from_json(
        br#"{"name":"web","flist":"http://hub/web.fl","compute":{"cpu":2,"memory":"512M"},"size":"1G",
            "disks":[{"name":"data","size":"1G","mountpoint":"/data"}],
            "network":{"interfaces":[{"network":"lan"},{"network":"lan"}]},
            "entrypoint":"/bin/web --port 80","env":{"A":"b c"},"kernel_args":"quiet",
            "volumes":[{"name":"shared","mountpoint":"/srv/shared"}]}"#,
    )
    .unwrap();
    let addr = |ip: &str, tap: &str| Address {
        network: "lan".into(),
        ip: ip.parse().unwrap(),
        prefix: 24,
        gateway: "10.0.0.1".parse().unwrap(),
        tap: tap.into(),
    };
    let record = DeploymentRecord {
        spec,
        created_at: 0,
        state: DeploymentState::Pending,
        restarts: 0,
        addresses: vec![addr("10.0.0.2", "t0"), addr("10.0.0.3", "t1")],
        error: None,
    };
    let runner = ProcessRunner {
        zvm: "/zvm".into(),
        cache_dir: "/c".into(),
        kernel: Some("/k".into()),
        networks: vec![],
        shutdown_timeout: 9,
    };
    let paths = VmPaths::new(Path::new("/s"), "web");
    let args = runner.command_args(&record, &paths).join(" ");
    let want = "run --flist http://hub/web.fl --flist-cache /c --flist-work /s/vms/web/work --cpus 2 --memory 512M \
        --console stdio --output /s/vms/web/console.log --output-max 16M --shutdown-timeout 9 --kernel /k --hostname web --entrypoint /bin/web --port 80 --env A=b c --root-size 1073741824 --root-fs virtiofs \
        --volume /s/vms/web/volumes/shared.ext4:/srv/shared:image --disk path=/s/vms/web/disks/data.img,id=data,mount=/data --net tap=t0,id=eth0 --net tap=t1,id=eth1 \
        --append ip=10.0.0.2::10.0.0.1:255.255.255.0::eth0:off zvm.ip.eth1=10.0.0.3/24 zvm.mount.data=/data quiet";
    assert_eq!(args, want);
}

#[test]
fn prepare_makes_sparse_disks() {
    let dir = tempfile::tempdir().unwrap();
    let spec = WorkloadSpec::from_json(br#"{"name":"d","flist":"/nonexistent.fl","compute":{"cpu":1,"memory":"256M"},"disks":[{"name":"data","size":"1G","mountpoint":"/d"}],"volumes":[{"name":"v","mountpoint":"/v"}]}"#).unwrap();
    let record = DeploymentRecord {
        spec,
        created_at: 0,
        state: DeploymentState::Pending,
        restarts: 0,
        addresses: vec![],
        error: None,
    };
    let runner = ProcessRunner {
        zvm: "/zvm".into(),
        cache_dir: dir.path().join("c"),
        kernel: None,
        networks: vec![],
        shutdown_timeout: 0,
    };
    let paths = VmPaths::new(dir.path(), "d");
    // The flist is missing, so preparing fails after the disks are made, before the
    // volumes (whose roots take after the image's directories).
    let e = runner.prepare(&record, &paths).unwrap_err();
    assert!(e.contains("is not reachable"), "{e}");
    assert!(!paths.volumes.join("v.ext4").exists());
    let img = paths.disks.join("data.img");
    let meta = std::fs::metadata(&img).unwrap();
    assert_eq!(meta.len(), 1 << 30);
    let mut head = vec![0u8; 2048];
    std::io::Read::read_exact(&mut std::fs::File::open(&img).unwrap(), &mut head).unwrap();
    // The ext4 magic 0xEF53 sits at byte 56 of the superblock, 1024 bytes in.
    assert_eq!(
        head.get(1080..1082),
        Some(&[0x53, 0xEF][..]),
        "not formatted"
    );
    use std::os::unix::fs::MetadataExt;
    assert!(
        meta.blocks() * 512 < 1 << 20,
        "not sparse: {} blocks",
        meta.blocks()
    );
}

#[test]
fn volumes_are_bounded_stores_owned_as_the_images_mount_points() {
    use std::os::unix::fs::PermissionsExt;
    if flist_fetcher::ext4::find_mkfs().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("srv/data")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/file"), b"x").unwrap();
    std::os::unix::fs::chown(root.join("srv/data"), Some(1000), Some(1001)).unwrap();
    std::fs::set_permissions(
        root.join("srv/data"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    let fl = dir.path().join("app.fl");
    let opts = flist_fetcher::PackOptions {
        stores: vec![format!("dir://{}", dir.path().join("blocks").display())],
        ..Default::default()
    };
    flist_fetcher::pack(&root, &fl, &opts).unwrap();
    let spec = format!(
        r#"{{"name":"d","flist":"{}","compute":{{"cpu":1,"memory":"256M"}},
            "volumes":[{{"name":"data","size":"2M","mountpoint":"/srv/data/"}},
                       {{"name":"none","mountpoint":"/nowhere"}},
                       {{"name":"file","mountpoint":"/etc/file"}}]}}"#,
        fl.display()
    );
    let record = DeploymentRecord {
        spec: WorkloadSpec::from_json(spec.as_bytes()).unwrap(),
        created_at: 0,
        state: DeploymentState::Pending,
        restarts: 0,
        addresses: vec![],
        error: None,
    };
    let paths = VmPaths::new(dir.path(), "d");
    make_volumes(&record, &paths, &dir.path().join("cache")).unwrap();
    let stat = |name: &str| {
        let out = std::process::Command::new("debugfs")
            .args(["-R", "ls -l /"])
            .arg(paths.volumes.join(name))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        std::fs::metadata(paths.volumes.join("data.ext4"))
            .unwrap()
            .len(),
        2 << 20
    );
    assert!(
        stat("data.ext4").contains("40750 (2)   1000   1001"),
        "{}",
        stat("data.ext4")
    );
    // No directory there in the image (missing, or a file): root 0755, 1 GiB.
    for name in ["none.ext4", "file.ext4"] {
        assert!(
            stat(name).contains("40755 (2)      0      0"),
            "{}",
            stat(name)
        );
        let len = std::fs::metadata(paths.volumes.join(name)).unwrap().len();
        assert_eq!(len, 1 << 30);
    }
    // Made again: kept, the image is not read (its flist may be gone meanwhile).
    std::fs::remove_file(&fl).unwrap();
    make_volumes(&record, &paths, &dir.path().join("cache")).unwrap();
    // Something else in a store's place is refused.
    std::fs::remove_file(paths.volumes.join("none.ext4")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", paths.volumes.join("none.ext4")).unwrap();
    let e = make_volumes(&record, &paths, &dir.path().join("cache")).unwrap_err();
    assert!(e.contains("not a regular file"), "{e}");
    // A volume directory of an earlier zvm is kept as it is (unbounded).
    std::fs::create_dir(paths.volumes.join("old")).unwrap();
    assert_eq!(paths.volume("old"), (paths.volumes.join("old"), false));
    assert_eq!(paths.volume("new"), (paths.volumes.join("new.ext4"), true));
}
