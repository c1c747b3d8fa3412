//! Builder tests: device slots, IRQs and command-line arguments.

use super::*;
use crate::resources::{DriveConfig, VsockConfig};

#[test]
fn virtio_devices_get_slots_irqs_and_command_line_args() {
    let disk = tempfile::NamedTempFile::new().expect("disk");
    disk.as_file().set_len(1 << 20).expect("size");
    let mut b =
        MicrovmBuilder::new(64, 1, CpuTemplate::None, true, BuildOptions::default()).expect("VM");
    let drive = |id: &str, root| DriveConfig {
        drive_id: id.into(),
        path_on_host: disk.path().into(),
        is_root_device: root,
        is_read_only: true,
        rate_limiter: None,
        io_engine: Default::default(),
    };
    let first = b.attach_drive(&drive("data", false)).expect("drive");
    let second = b.attach_drive(&drive("root", true)).expect("drive");
    let rng = b.attach_entropy().expect("rng");
    assert_eq!(
        first,
        VirtioSlot {
            addr: 0xd000_1000,
            irq: 5
        }
    );
    assert_eq!(
        second,
        VirtioSlot {
            addr: 0xd000_2000,
            irq: 6
        }
    );
    assert_eq!(
        rng,
        VirtioSlot {
            addr: 0xd000_3000,
            irq: 7
        }
    );
    assert_eq!(
        b.extra_kernel_args("", true),
        [
            "virtio_mmio.device=4K@0xd0001000:5",
            "virtio_mmio.device=4K@0xd0002000:6",
            "virtio_mmio.device=4K@0xd0003000:7",
            "root=/dev/vdb ro",
        ]
    );
    assert_eq!(
        b.extra_kernel_args("", false),
        ["root=/dev/vdb ro"],
        "without command-line devices, only the root drive's parameter"
    );
    assert_eq!(polled_fds(&b), 3, "one queue each");
    while b.next_virtio_slot().irq <= layout::IRQ_MAX {
        b.attach_entropy().expect("rng");
    }
    assert!(matches!(
        b.attach_entropy(),
        Err(BuildError::NoFreeIrq { .. })
    ));
    let missing = DriveConfig {
        path_on_host: "/nonexistent/disk.img".into(),
        ..drive("x", false)
    };
    assert!(matches!(
        b.attach_drive(&missing),
        Err(BuildError::Block(_))
    ));
}

#[test]
fn vsock_is_attached_with_its_host_event_handler() {
    let dir = tempfile::tempdir().expect("dir");
    let mut b =
        MicrovmBuilder::new(64, 1, CpuTemplate::None, true, BuildOptions::default()).expect("VM");
    let cfg = VsockConfig {
        guest_cid: 3,
        uds_path: dir.path().join("v.sock"),
    };
    let slot = b.attach_vsock(&cfg).expect("vsock");
    assert_eq!(
        slot,
        VirtioSlot {
            addr: 0xd000_1000,
            irq: 5
        }
    );
    assert_eq!(polled_fds(&b), 4, "three queues and the host sockets");
    assert!(dir.path().join("v.sock").exists(), "listening");
    let bad = VsockConfig {
        guest_cid: 1,
        ..cfg
    };
    assert!(matches!(b.attach_vsock(&bad), Err(BuildError::Vsock(_))));
}

#[test]
fn device_args_go_before_init_args() {
    let extra = [
        "virtio_mmio.device=4K@0xd0001000:5".to_string(),
        "root=/dev/vda ro".to_string(),
    ];
    assert_eq!(with_kernel_args("console=ttyS0", &[]), "console=ttyS0");
    assert_eq!(
        with_kernel_args("console=ttyS0 panic=1", &extra),
        "console=ttyS0 panic=1 virtio_mmio.device=4K@0xd0001000:5 root=/dev/vda ro"
    );
    assert_eq!(
        with_kernel_args("console=ttyS0 -- init --verbose", &extra[1..]),
        "console=ttyS0 root=/dev/vda ro -- init --verbose"
    );
    assert_eq!(
        with_kernel_args("-- x", &extra[1..]),
        "root=/dev/vda ro -- x"
    );
    assert_eq!(
        with_kernel_args("a --b", &extra[1..]),
        "a --b root=/dev/vda ro"
    );
    assert_eq!(with_kernel_args("", &extra[1..]), "root=/dev/vda ro");
}

#[test]
fn guest_memory_is_registered_once_with_the_dirty_log_flag() {
    let size = 64usize << 20;
    let logs = |b: &MicrovmBuilder| b.vm.get_dirty_log(0, size).is_ok();
    let mem = create_guest_memory(size as u64).expect("memory");
    let mut tracked = MicrovmBuilder::with_memory_tracked(
        mem,
        64,
        1,
        CpuTemplate::None,
        true,
        BuildOptions::default(),
        true,
    )
    .expect("VM");
    assert!(
        tracked.track_dirty_pages && logs(&tracked),
        "KVM logs the slot"
    );
    tracked.track_dirty_pages().expect("already tracking");
    assert_eq!(tracked.memory_registrations, 1, "registered once");

    let mut plain =
        MicrovmBuilder::new(64, 1, CpuTemplate::None, true, BuildOptions::default()).expect("VM");
    assert!(!plain.track_dirty_pages && !logs(&plain), "no dirty log");
    assert_eq!(plain.memory_registrations, 1);
    // A builder made step by step can still switch tracking on, once.
    plain.track_dirty_pages().expect("track");
    plain.track_dirty_pages().expect("track");
    assert!(logs(&plain));
    assert_eq!(plain.memory_registrations, 2);
}

/// How many fds the VMM loop polls for the builder's virtio devices.
fn polled_fds(b: &MicrovmBuilder) -> usize {
    b.virtio
        .iter()
        .map(|t| {
            crate::devices::virtio::mmio::TransportEvents::new(t.clone())
                .watched()
                .len()
        })
        .sum()
}
