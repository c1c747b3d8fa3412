//! Unit tests of the pre-boot configuration and its translation into resources.

use super::*;

fn drive(id: &str, path: &str) -> Drive {
    serde_json::from_value(
        serde_json::json!({"drive_id": id, "path_on_host": path, "is_root_device": false}),
    )
    .expect("drive")
}

#[test]
fn start_needs_a_boot_source_and_valid_files() {
    let mut c = PendingConfig::default();
    assert!(c
        .to_resources()
        .expect_err("no boot source")
        .message
        .contains("PUT /boot-source"));
    c.boot_source = Some(BootSource {
        kernel_image_path: "/nonexistent/vmlinux".into(),
        boot_args: None,
        initrd_path: None,
    });
    assert!(c
        .to_resources()
        .expect_err("missing kernel")
        .message
        .contains("cannot be read"));
}

#[test]
fn drive_settings_zvm_does_not_honour_are_refused_not_ignored() {
    let mut c = PendingConfig::default();
    let with = |field: &str, value: &str| {
        serde_json::from_value::<Drive>(serde_json::json!({
            "drive_id": "d", "path_on_host": "/d", "is_root_device": false, field: value
        }))
        .expect("drive")
    };
    let err = c
        .put_drive(with("cache_type", "Unsafe"))
        .expect_err("Unsafe");
    assert!(err.message.contains("Writeback"), "{}", err.message);
    assert!(c.drives.is_empty());
    c.put_drive(with("cache_type", "Writeback"))
        .expect("what zvm does");
    c.put_drive(with("io_engine", "Sync"))
        .expect("what zvm does");
    assert_eq!(c.drives.len(), 1);
}

/// A configuration whose boot source is a file that exists (this test program).
fn with_a_readable_kernel() -> PendingConfig {
    PendingConfig {
        boot_source: Some(BootSource {
            kernel_image_path: "/proc/self/exe".into(),
            boot_args: None,
            initrd_path: None,
        }),
        ..Default::default()
    }
}

#[test]
fn io_engine_async_reaches_the_resources_and_back() {
    let mut c = with_a_readable_kernel();
    for (id, engine) in [("a", Some("Async")), ("s", Some("Sync")), ("d", None)] {
        let mut d = serde_json::json!({
            "drive_id": id, "path_on_host": "/proc/self/exe", "is_root_device": false
        });
        if let Some(engine) = engine {
            d["io_engine"] = engine.into();
        }
        c.put_drive(serde_json::from_value(d).expect("drive"))
            .expect("accepted");
    }
    let r = c.to_resources().expect("resources");
    let engines: Vec<_> = r.drives.iter().map(|d| d.io_engine).collect();
    use resources::BlockIoEngine::{Async, Sync};
    assert_eq!(engines, [Async, Sync, Sync]);
    let back = PendingConfig::from_resources(&r);
    assert_eq!(back.drives[0].io_engine, Some(model::IoEngine::Async));
    assert_eq!(back.drives[1].io_engine, None, "Sync is the default");
}

#[test]
fn unsupported_machine_settings_are_refused() {
    let mut c = PendingConfig::default();
    let mut m = c.machine.clone();
    m.smt = true;
    assert!(c.put_machine(m).is_err());
    let patch = MachineConfigUpdate {
        vcpu_count: Some(0),
        ..Default::default()
    };
    assert!(c.patch_machine(patch).is_err());
    let patch = MachineConfigUpdate {
        mem_size_mib: Some(512),
        vcpu_count: Some(2),
        ..Default::default()
    };
    c.patch_machine(patch).expect("valid patch");
    assert_eq!((c.machine.vcpu_count, c.machine.mem_size_mib), (2, 512));
}

#[test]
fn a_pit_and_the_irqchip_reach_the_resources_and_back() {
    use resources::IrqchipKind;
    let mut c = with_a_readable_kernel();
    let m = c.to_resources().expect("valid").machine_config;
    assert_eq!((m.pit, m.irqchip_kind()), (false, IrqchipKind::Split));
    let pit = |pit, irqchip| MachineConfigUpdate {
        pit,
        irqchip,
        ..Default::default()
    };
    let refused = c
        .patch_machine(pit(Some(true), Some(IrqchipKind::Split)))
        .expect_err("KVM's PIT needs its PIC");
    assert!(
        refused.to_string().contains("cannot have a PIT"),
        "{refused}"
    );
    c.patch_machine(pit(Some(true), None)).expect("a PIT");
    let r = c.to_resources().expect("valid");
    let m = &r.machine_config;
    assert_eq!((m.pit, m.irqchip_kind()), (true, IrqchipKind::Kernel));
    assert_eq!(PendingConfig::from_resources(&r).to_json(), c.to_json());
    c.patch_machine(pit(Some(false), Some(IrqchipKind::Kernel)))
        .expect("KVM's irqchip without a PIT");
    let m = c.to_resources().expect("valid").machine_config;
    assert_eq!((m.pit, m.irqchip), (false, Some(IrqchipKind::Kernel)));
}

#[test]
fn network_vsock_and_rate_limiters_reach_the_resources() {
    let dir = tempfile::tempdir().expect("dir");
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, b"kernel").expect("kernel");
    let mut c = PendingConfig {
        boot_source: Some(BootSource {
            kernel_image_path: kernel.display().to_string(),
            boot_args: None,
            initrd_path: None,
        }),
        ..Default::default()
    };
    let iface: NetworkInterface = serde_json::from_value(serde_json::json!({
        "iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "02:00:00:00:00:01",
        "tx_rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}}
    }))
    .expect("iface");
    c.put_net(iface);
    let update = NetworkInterfaceUpdate {
        iface_id: "eth0".into(),
        rx_rate_limiter: Some(model::RateLimiter::default()),
        tx_rate_limiter: None,
    };
    c.patch_net(update).expect("patch");
    assert!(c
        .patch_net(NetworkInterfaceUpdate {
            iface_id: "eth9".into(),
            rx_rate_limiter: None,
            tx_rate_limiter: None
        })
        .is_err());
    c.vsock = Some(
        serde_json::from_value(
            serde_json::json!({"guest_cid": 3, "uds_path": dir.path().join("v.sock")}),
        )
        .expect("vsock"),
    );
    let r = c.to_resources().expect("valid");
    assert_eq!(r.net[0].host_dev_name, "tap0");
    assert_eq!(
        r.net[0]
            .tx_rate_limiter
            .and_then(|l| l.bandwidth)
            .map(|b| b.size),
        Some(1000)
    );
    assert!(r.net[0].rx_rate_limiter.is_some());
    assert_eq!(r.net[0].queue_pairs, 1, "one queue pair unless asked");
    // Multiqueue is opt-in through the interface's body and bounded by the vCPUs.
    let mq: NetworkInterface = serde_json::from_value(serde_json::json!({
        "iface_id": "eth0", "host_dev_name": "tap0", "queue_pairs": 2
    }))
    .expect("iface");
    c.put_net(mq);
    let err = c.to_resources().expect_err("1 vCPU, 2 pairs").to_string();
    assert!(err.contains("2 queue pairs; use 1 to 1"), "{err}");
    c.machine.vcpu_count = 2;
    let r = c.to_resources().expect("valid");
    assert_eq!(r.net[0].queue_pairs, 2);
    let back = PendingConfig::from_resources(&r);
    assert_eq!(
        back.net[0].queue_pairs,
        Some(2),
        "GET /vm/config shows them"
    );
    c.machine.vcpu_count = 1;
    c.put_net(serde_json::from_value(serde_json::json!({
        "iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "02:00:00:00:00:01",
        "rx_rate_limiter": {}, "tx_rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}}
    }))
    .expect("iface"));
    assert_eq!(r.vsock.as_ref().map(|v| v.guest_cid), Some(3));
    assert!(!r.machine_config.track_dirty_pages);
    c.patch_machine(MachineConfigUpdate {
        track_dirty_pages: Some(true),
        ..Default::default()
    })
    .expect("patch");
    assert!(
        c.to_resources()
            .expect("valid")
            .machine_config
            .track_dirty_pages,
        "reaches the VMM for diff snapshots"
    );
    assert!(
        c.to_resources()
            .expect("valid")
            .machine_config
            .cmdline_devices
    );
    c.patch_machine(MachineConfigUpdate {
        cmdline_devices: Some(false),
        ..Default::default()
    })
    .expect("patch");
    assert!(
        !c.to_resources()
            .expect("valid")
            .machine_config
            .cmdline_devices,
        "an ACPI kernel's VM leaves the devices off the command line"
    );
    let back = PendingConfig::from_resources(&c.to_resources().expect("valid"));
    assert_eq!(
        back.to_json(),
        c.to_json(),
        "a restored VM's configuration reads as the one it was built from"
    );
    assert_eq!(c.to_json()["network-interfaces"][0]["iface_id"], "eth0");
}

#[test]
fn drives_are_replaced_by_id_and_patched() {
    let mut c = PendingConfig::default();
    c.put_drive(drive("a", "/one")).expect("put");
    c.put_drive(drive("b", "/two")).expect("put");
    c.put_drive(drive("a", "/three")).expect("replace");
    assert_eq!(
        c.drives
            .iter()
            .map(|d| d.path_on_host.as_str())
            .collect::<Vec<_>>(),
        ["/three", "/two"]
    );
    c.patch_drive(DriveUpdate {
        drive_id: "b".into(),
        path_on_host: Some("/four".into()),
        rate_limiter: None,
    })
    .expect("patch");
    assert_eq!(c.drives[1].path_on_host, "/four");
    assert!(c
        .patch_drive(DriveUpdate {
            drive_id: "zz".into(),
            path_on_host: None,
            rate_limiter: None
        })
        .is_err());
    let json = c.to_json();
    assert_eq!(json["drives"][0]["drive_id"], "a");
    assert_eq!(json["machine-config"]["vcpu_count"], 1);
}
