use super::*;
use crate::sandbox::template::{ContainerVm, TemplateKey};
use crate::sandbox::vmconfig::{vm_resources, VmFiles, VmSize};
use crate::sandbox::GuestArtifacts;

fn artifacts() -> GuestArtifacts {
    GuestArtifacts {
        kernel: "/k/vmlinux".into(),
        agent: "/k/agent".into(),
    }
}

fn nic(i: usize, mac: Option<&str>) -> NetConfig {
    NetConfig {
        iface_id: format!("eth{i}"),
        host_dev_name: format!("zvmt0000000{i}"),
        guest_mac: mac.map(str::to_string),
        rx_rate_limiter: None,
        tx_rate_limiter: None,
        queue_pairs: 1,
    }
}

fn disk(id: &str) -> DriveConfig {
    DriveConfig {
        drive_id: id.into(),
        path_on_host: format!("/w/{id}.img").into(),
        is_root_device: false,
        is_read_only: false,
        rate_limiter: None,
        io_engine: Default::default(),
    }
}

/// A node deployment's VM: two interfaces (`ip=` for eth0, `zvm.ip.eth1=`), one data disk.
fn deployment(artifacts: &GuestArtifacts) -> VmResources {
    let files = VmFiles {
        kernel: &artifacts.kernel,
        agent_image: Path::new("/w/agent.ext4"),
        rootfs_image: Path::new("/w/rootfs.ext4"),
        console_log: Path::new("/w/console.log"),
        vsock: Path::new("/w/vsock.sock"),
    };
    let size = VmSize {
        vcpus: 1,
        memory_mib: 256,
    };
    let mut r = vm_resources(size, files, false);
    r.console = vmm::ConsoleConfig::Off;
    r.net = vec![nic(0, None), nic(1, Some("02:00:00:00:00:09"))];
    r.drives.push(disk("data"));
    let args = format!(
        "{} ip=10.20.0.5::10.20.0.1:255.255.255.0::eth0:off zvm.ip.eth1=10.30.0.7/16 zvm.mount.data=/data",
        r.boot_args()
    );
    r.boot_source.boot_args = Some(args);
    r
}

#[test]
fn a_vm_with_interfaces_and_data_disks_fits_the_template_of_its_shape() {
    let artifacts = artifacts();
    let r = deployment(&artifacts);
    let vm = ContainerVm::from_resources(&r, &artifacts).unwrap();
    assert_eq!(vm.extras.nets.len(), 2);
    assert_eq!(vm.extras.data_disks[0].drive_id, "data");
    let (drives, net) = vm.extras.overrides();
    assert_eq!(
        drives,
        [("data0".to_string(), PathBuf::from("/w/data.img"))]
    );
    assert_eq!(
        net,
        [
            ("eth0".to_string(), "zvmt00000000".to_string()),
            ("eth1".to_string(), "zvmt00000001".to_string())
        ]
    );
}

#[test]
fn the_key_counts_interfaces_and_data_disks() {
    let dir = tempfile::tempdir().unwrap();
    let (k, a) = (dir.path().join("vmlinux"), dir.path().join("agent"));
    std::fs::write(&k, b"kernel").unwrap();
    std::fs::write(&a, b"agent").unwrap();
    let artifacts = GuestArtifacts {
        kernel: k.clone(),
        agent: a,
    };
    let cache = crate::sandbox::template::TemplateCache::new(dir.path(), 4);
    let mut r = deployment(&artifacts);
    r.boot_source.kernel_image_path = k;
    let key = |r: &VmResources| -> TemplateKey {
        ContainerVm::from_resources(r, &artifacts)
            .unwrap()
            .key(&cache)
            .unwrap()
    };
    let full = key(&r);
    assert_eq!((full.nics, full.data_disks), (2, 1));
    // Other taps, MACs, addresses and disk files: the same template.
    let mut other = r.clone();
    other.net[0].host_dev_name = "zvmtffffffff0".into();
    other.net[1].guest_mac = Some("02:00:00:00:00:0a".into());
    other.drives[2].path_on_host = "/elsewhere/disk.img".into();
    other.boot_source.boot_args = Some(
        r.boot_args()
            .replace("10.20.0.5", "10.20.0.6")
            .replace("/data", "/srv"),
    );
    assert_eq!(key(&other).id(), full.id());
    // Fewer interfaces or disks: another template.
    let mut fewer = r.clone();
    fewer.net.pop();
    let args = fewer.boot_args().replace(" zvm.ip.eth1=10.30.0.7/16", "");
    fewer.boot_source.boot_args = Some(args);
    assert_ne!(key(&fewer).id(), full.id());
    fewer.drives.pop();
    assert_ne!(key(&fewer).id(), full.id());
    // Neither: the plain template, whose key (and id) is the one it always had.
    fewer.net.clear();
    fewer.boot_source.boot_args = Some(crate::sandbox::vmconfig::container_boot_args());
    let plain = key(&fewer);
    assert_eq!((plain.nics, plain.data_disks), (0, 0));
    let json = serde_json::to_string(&plain).unwrap();
    assert!(!json.contains("nics"), "{json}");
}

#[test]
fn what_a_template_cannot_have_does_not_fit() {
    let artifacts = artifacts();
    let base = deployment(&artifacts);
    let misfit = |change: &dyn Fn(&mut VmResources), why: &str| {
        let mut r = base.clone();
        change(&mut r);
        let err = ContainerVm::from_resources(&r, &artifacts).unwrap_err();
        assert!(err.contains(why), "{why}: {err}");
    };
    misfit(&|r| r.drives[2].is_read_only = true, "data disk");
    misfit(
        &|r| r.drives[2].rate_limiter = Some(Default::default()),
        "data disk",
    );
    misfit(
        &|r| r.drives.extend((0..9).map(|i| disk(&format!("d{i}")))),
        "data disks",
    );
    misfit(
        &|r| r.net[0].tx_rate_limiter = Some(Default::default()),
        "rate limiter",
    );
    misfit(
        &|r| r.net.extend((2..9).map(|i| nic(i, None))),
        "network interfaces",
    );
    // Command lines that add more than network and mount notes.
    misfit(
        &|r| r.boot_source.boot_args = Some(format!("{} quiet", r.boot_args())),
        "command line",
    );
    misfit(
        &|r| r.boot_source.boot_args = Some(r.boot_args().replace("rootfstype", "rootfstyp")),
        "command line",
    );
    // Network words the clone's agent could not apply.
    misfit(
        &|r| r.boot_source.boot_args = Some(format!("{} zvm.ip.eth7=10.1.1.1/24", r.boot_args())),
        "eth7, which the VM lacks",
    );
    misfit(
        &|r| r.boot_source.boot_args = Some(format!("{} ip=dhcp", r.boot_args())),
        "ip=dhcp",
    );
    misfit(
        &|r| r.boot_source.boot_args = Some(r.boot_args().replace("255.255.255.0", "255.0.255.0")),
        "ip=",
    );
    misfit(
        &|r| r.net[1].guest_mac = Some("01:00:00:00:00:01".into()),
        "unicast",
    );
    misfit(&|r| r.net[1].guest_mac = Some("zz".into()), "MAC");
}

#[test]
fn the_guest_network_comes_from_the_command_line_and_the_macs() {
    let artifacts = artifacts();
    let r = deployment(&artifacts);
    let net = guest_network(&r).unwrap();
    assert_eq!(net.len(), 2);
    assert_eq!(net[0].name, "eth0");
    assert_eq!(net[0].address, Some((Ipv4Addr::new(10, 20, 0, 5), 24)));
    assert_eq!(net[0].gateway, Some(Ipv4Addr::new(10, 20, 0, 1)));
    assert_eq!(net[1].address, Some((Ipv4Addr::new(10, 30, 0, 7), 16)));
    assert_eq!(net[1].gateway, None);
    assert_eq!(net[1].mac, [2, 0, 0, 0, 0, 9]);
    // No MAC given: a random local unicast one, another for each clone, never the
    // template's.
    let again = guest_network(&r).unwrap();
    assert_ne!(net[0].mac, again[0].mac);
    for mac in [net[0].mac, again[0].mac] {
        assert_eq!(mac[0] & 3, 2, "{mac:?}");
        assert_ne!(mac, template_mac(0));
    }
    let mut plain = r.clone();
    plain.net.clear();
    plain.boot_source.boot_args = Some("console=ttyS0".into());
    assert!(guest_network(&plain).unwrap().is_empty());
}

#[test]
fn added_words_are_only_network_and_mount_notes_at_the_end() {
    let base = "console=ttyS0 init=/init";
    assert_eq!(added_network_words(base, base), Some(vec![]));
    assert_eq!(
        added_network_words(base, &format!("{base} ip=1 zvm.mount.d=/d zvm.ip.eth1=x")),
        Some(vec!["ip=1", "zvm.mount.d=/d", "zvm.ip.eth1=x"])
    );
    assert_eq!(added_network_words(base, &format!("{base}x")), None);
    assert_eq!(
        added_network_words(base, &format!("{base} zvm.ip.eth1")),
        None
    );
    assert_eq!(
        added_network_words(base, &format!("{base} init=/bin/sh")),
        None
    );
    assert_eq!(added_network_words(base, "console=ttyS0"), None);
}

#[test]
fn the_template_build_gets_placeholders_and_taps_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let artifacts = artifacts();
    let r = deployment(&artifacts);
    let extras = Extras::of(&r).unwrap();
    let mut template = VmResources::new("/k/vmlinux");
    let scratch = extras.add_to_template(&mut template, dir.path()).unwrap();
    assert_eq!(scratch.len(), 1);
    assert_eq!(std::fs::metadata(&scratch[0]).unwrap().len(), 0);
    assert_eq!(template.drives[0].drive_id, "data0");
    assert_eq!(template.net.len(), 2);
    let taps: Vec<_> = template
        .net
        .iter()
        .map(|n| n.host_dev_name.clone())
        .collect();
    assert!(
        taps.iter()
            .all(|t| t.len() <= 15 && t.starts_with("zvmtpl")),
        "{taps:?}"
    );
    assert_ne!(taps[0], taps[1]);
    let other = tempfile::tempdir().unwrap();
    assert_ne!(build_tap(other.path(), 0), taps[0]);
    assert_eq!(
        template.net[0].guest_mac.as_deref(),
        Some("02:7a:76:6d:00:00")
    );
}

#[test]
fn device_naming_on_the_command_line_does_not_matter_and_misfits_are_named() {
    let artifacts = artifacts();
    let mut r = deployment(&artifacts);
    // zvm run's default: only a boot's command line differs.
    r.machine_config.cmdline_devices = true;
    ContainerVm::from_resources(&r, &artifacts).unwrap();
    r.machine_config.cpu_template = vmm::resources::CpuTemplate::None;
    r.entropy = None;
    let err = ContainerVm::from_resources(&r, &artifacts).unwrap_err();
    assert!(
        err.contains("cpu_template") && err.contains("entropy"),
        "{err}"
    );
    assert!(!err.contains("drives"), "{err}");
}
