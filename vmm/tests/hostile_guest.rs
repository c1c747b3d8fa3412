//! A guest that writes garbage to every register of every virtio-mmio device (and reads
//! them back), so each device gets nonsense queue sizes and ring addresses, status bits in
//! any order, and notifications for rings that point anywhere. The VMM must keep running:
//! the guest then resets the VM, which must end as a reboot, not a failure.

mod common;

use common::Console;
use std::time::Duration;
use vmm::builder::{BuildOptions, MicrovmBuilder};
use vmm::devices::serial::ConsoleSink;
use vmm::resources::{CpuTemplate, DriveConfig, VsockConfig};
use vmm::VmOutcome;

const CODE_ADDR: u64 = 0x10_0000;

/// `rounds` passes over `len` bytes of MMIO from `base`, 4 bytes at a time: write a
/// xorshift32 value, read the register back; then reset through the i8042.
fn hammer(base: u64, len: u32, rounds: u32) -> Vec<u8> {
    let mut code = vec![0x41, 0xb8]; // mov r8d, rounds
    code.extend_from_slice(&rounds.to_le_bytes());
    code.extend_from_slice(&[0xb8, 0x5a, 0x5a, 0x5a, 0x5a]); // mov eax, seed
    let outer = code.len();
    code.extend_from_slice(&[0x48, 0xbf]); // mov rdi, base
    code.extend_from_slice(&base.to_le_bytes());
    code.push(0xb9); // mov ecx, len / 4
    code.extend_from_slice(&(len / 4).to_le_bytes());
    let inner = code.len();
    code.extend_from_slice(&[
        0x89, 0xc2, 0xc1, 0xe2, 0x0d, 0x31, 0xd0, // edx = eax << 13; eax ^= edx
        0x89, 0xc2, 0xc1, 0xea, 0x11, 0x31, 0xd0, // edx = eax >> 17; eax ^= edx
        0x89, 0xc2, 0xc1, 0xe2, 0x05, 0x31, 0xd0, // edx = eax << 5; eax ^= edx
        0x89, 0x07, // mov [rdi], eax
        0x8b, 0x17, // mov edx, [rdi]
        0x48, 0x83, 0xc7, 0x04, // add rdi, 4
        0xff, 0xc9, // dec ecx
    ]);
    let back = i8::try_from(inner as i64 - (code.len() as i64 + 2)).expect("short jump");
    code.extend_from_slice(&[0x75, back as u8]); // jnz inner
    code.extend_from_slice(&[0x41, 0xff, 0xc8]); // dec r8d
    let back = i32::try_from(outer as i64 - (code.len() as i64 + 6)).expect("jump");
    code.extend_from_slice(&[0x0f, 0x85]); // jnz outer (rel32)
    code.extend_from_slice(&back.to_le_bytes());
    code.extend_from_slice(&[0xb0, 0xfe, 0xe6, 0x64, 0xf4]); // reset; hlt
    code
}

#[test]
fn garbage_in_every_virtio_register_leaves_the_vmm_running() {
    let dir = tempfile::tempdir().expect("dir");
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("disk");
    let mut builder = MicrovmBuilder::new(64, 1, CpuTemplate::Auto, true, BuildOptions::default())
        .expect("build VM");
    let console = Console::default();
    builder
        .attach_serial(ConsoleSink::Writer(Box::new(console.clone())), false, false)
        .expect("serial");
    builder.attach_i8042().expect("i8042");
    builder.attach_acpi_pm().expect("ACPI");
    let first = builder
        .attach_drive(&DriveConfig {
            drive_id: "d".into(),
            path_on_host: disk.clone(),
            is_root_device: false,
            is_read_only: false,
            rate_limiter: None,
            io_engine: Default::default(),
        })
        .expect("disk");
    builder.attach_entropy().expect("rng");
    builder
        .attach_vsock(&VsockConfig {
            guest_cid: 3,
            uds_path: dir.path().join("v.sock"),
        })
        .expect("vsock");
    // Three 4 KiB slots from the first, forty passes with ever new values.
    let code = hammer(first.addr, 3 * 0x1000, 40);
    let entry = builder.load_raw_code(&code, CODE_ADDR).expect("load");
    let vm = builder.start(entry).expect("start");
    let metrics = vm.metrics();
    let stop = vm.stop_handle().expect("stop");
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(120));
        let _ = stop.request_stop();
    });
    let outcome = vm.wait();
    drop(watchdog);
    assert_eq!(outcome, VmOutcome::Reboot, "the guest got to its reset");
    // Every read was an exit to zvm (writes to QueueNotify are ioeventfds instead).
    let reads = metrics.vcpu().exit_mmio_read.get();
    assert!(reads >= 40 * 3 * 1024, "{reads} register reads");
    assert_eq!(
        std::fs::metadata(&disk).expect("disk").len(),
        1 << 20,
        "the disk kept its size"
    );
}
