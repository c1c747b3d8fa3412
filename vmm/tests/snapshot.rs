//! Snapshots of a tiny guest that counts in memory, in this process: full and diff
//! snapshots, restores from each, and refused files. (zvm's own tests restore in another
//! process through the command line and the API.)

use std::path::{Path, PathBuf};
use std::time::Duration;
use vmm::builder::{build_microvm_with_console, BuildOptions};
use vmm::devices::serial::ConsoleSink;
use vmm::resources::IrqchipKind;
use vmm::snapshot::{
    read_state_file, restore_microvm, CreateSnapshotParams, RestoreOverrides, RestoreParams,
    SnapshotError, SnapshotType,
};
use vmm::{RunningVm, VmOutcome, VmResources};

const COUNTER: u64 = 0x5000;
const BOOTS: u64 = 0x5008;
const LOAD_ADDR: u64 = 0x10_0000;

/// The guest: `inc qword [BOOTS]; mov rax, [COUNTER]; loop: inc rax; mov [COUNTER], rax; jmp loop`.
fn counter_code() -> Vec<u8> {
    let mut code = vec![0x48, 0xff, 0x04, 0x25];
    code.extend((BOOTS as u32).to_le_bytes());
    code.extend([0x48, 0x8b, 0x04, 0x25]);
    code.extend((COUNTER as u32).to_le_bytes());
    code.extend([0x48, 0xff, 0xc0, 0x48, 0x89, 0x04, 0x25]);
    code.extend((COUNTER as u32).to_le_bytes());
    code.extend([0xeb, 0xf3]);
    code
}

/// A minimal ELF64 executable: one PT_LOAD of `code` at [`LOAD_ADDR`], entered there in
/// 64-bit mode (no PVH note).
fn elf(code: &[u8]) -> Vec<u8> {
    let (ehsize, phsize) = (64u16, 56u16);
    let offset = u64::from(ehsize + phsize);
    let mut f = Vec::new();
    f.extend(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    f.extend(2u16.to_le_bytes()); // ET_EXEC
    f.extend(62u16.to_le_bytes()); // x86-64
    f.extend(1u32.to_le_bytes());
    f.extend(LOAD_ADDR.to_le_bytes()); // entry
    f.extend(u64::from(ehsize).to_le_bytes()); // phoff
    f.extend(0u64.to_le_bytes()); // shoff
    f.extend(0u32.to_le_bytes());
    f.extend(
        [ehsize, phsize, 1, 0, 0, 0]
            .iter()
            .flat_map(|v: &u16| v.to_le_bytes()),
    );
    f.extend(1u32.to_le_bytes()); // PT_LOAD
    f.extend(5u32.to_le_bytes()); // R+X
    f.extend(offset.to_le_bytes());
    f.extend(LOAD_ADDR.to_le_bytes());
    f.extend(LOAD_ADDR.to_le_bytes());
    f.extend((code.len() as u64).to_le_bytes());
    f.extend((code.len() as u64).to_le_bytes());
    f.extend(0x1000u64.to_le_bytes());
    f.extend(code);
    f
}

fn read_u64(mem_file: &Path, offset: u64) -> u64 {
    let bytes = std::fs::read(mem_file).expect("memory file");
    let at = usize::try_from(offset).expect("offset");
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn snapshot(vm: &RunningVm, kind: SnapshotType, state: &Path, mem: &Path) {
    let handle = vm.snapshot_handle().expect("handle");
    let params = CreateSnapshotParams {
        snapshot_type: kind,
        snapshot_path: state.into(),
        mem_file_path: mem.into(),
    };
    let info = handle
        .create(&params)
        .unwrap_or_else(|e| panic!("{kind:?} snapshot: {e}"));
    assert!(info.state_bytes > 0 && info.pages_written > 0, "{info:?}");
}

fn restore(state: &Path, mem: &Path, resume: bool) -> Result<RunningVm, SnapshotError> {
    restore_with(state, mem, resume, Default::default())
}

fn restore_with(
    state: &Path,
    mem: &Path,
    resume: bool,
    overrides: RestoreOverrides,
) -> Result<RunningVm, SnapshotError> {
    restore_params(RestoreParams {
        snapshot_path: state.into(),
        mem_file_path: mem.into(),
        overrides,
        resume,
        track_dirty_pages: true,
        seccomp: true,
    })
}

fn restore_params(params: RestoreParams) -> Result<RunningVm, SnapshotError> {
    restore_microvm(&params, BuildOptions::default(), ConsoleSink::Off, false)
}

fn run_then_pause(vm: &RunningVm) {
    if vm.is_paused() {
        vm.resume();
    }
    std::thread::sleep(Duration::from_millis(200));
    vm.pause().expect("pause");
}

fn end(vm: RunningVm) {
    vm.stop_handle()
        .expect("stop")
        .request_stop()
        .expect("stop");
    assert_eq!(vm.wait(), VmOutcome::Stopped);
}

#[test]
fn counting_guest_continues_after_full_and_diff_restores() {
    let files = Files {
        dir: tempfile::tempdir().expect("dir"),
    };
    let kernel = files.path("counter.elf");
    std::fs::write(&kernel, elf(&counter_code())).expect("kernel");
    let mut resources = VmResources::new(&kernel);
    resources.machine_config.mem_size_mib = 32;
    resources.machine_config.track_dirty_pages = true;
    let vm =
        build_microvm_with_console(&resources, BuildOptions::default(), ConsoleSink::Off, false)
            .expect("boot");
    let refused = vm
        .snapshot_handle()
        .expect("handle")
        .create(&CreateSnapshotParams {
            snapshot_type: SnapshotType::Full,
            snapshot_path: files.path("never"),
            mem_file_path: files.path("never.mem"),
        });
    assert!(
        matches!(refused, Err(SnapshotError::NotAllowed(_))),
        "a running VM is not snapshotted"
    );
    run_then_pause(&vm);
    let (state1, mem1) = (files.path("s1"), files.path("m1"));
    snapshot(&vm, SnapshotType::Full, &state1, &mem1);
    end(vm);
    let count1 = read_u64(&mem1, COUNTER);
    assert!(count1 > 0, "the guest counted");
    assert_eq!(read_u64(&mem1, BOOTS), 1);

    // Restore paused: nothing runs until the resume.
    let vm = restore(&state1, &mem1, false).expect("restore");
    assert!(vm.is_paused());
    run_then_pause(&vm);
    let (state2, diff) = (files.path("s2"), files.path("m1-diff"));
    std::fs::copy(&mem1, &diff).expect("copy the base");
    snapshot(&vm, SnapshotType::Diff, &state2, &diff);
    let (state3, mem3) = (files.path("s3"), files.path("m3"));
    snapshot(&vm, SnapshotType::Full, &state3, &mem3);
    end(vm);
    let count2 = read_u64(&mem3, COUNTER);
    assert!(count2 > count1, "the count went on from {count1}: {count2}");
    assert_eq!(read_u64(&mem3, BOOTS), 1, "the entry did not run again");
    assert!(
        std::fs::read(&diff).expect("diff") == std::fs::read(&mem3).expect("full"),
        "base + diff == full at the same moment"
    );
    assert_eq!(
        read_u64(&mem1, COUNTER),
        count1,
        "restoring left the memory file as it was"
    );

    // From the diff, resumed at once.
    let vm = restore(&state2, &diff, true).expect("restore from the diff");
    run_then_pause(&vm);
    let (state4, mem4) = (files.path("s4"), files.path("m4"));
    snapshot(&vm, SnapshotType::Full, &state4, &mem4);
    end(vm);
    assert!(read_u64(&mem4, COUNTER) > count2);
    assert_eq!(read_u64(&mem4, BOOTS), 1);

    // Refused: a flipped byte, a truncated state file, a truncated memory file.
    let mut bytes = std::fs::read(&state1).expect("state");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(files.path("corrupt"), &bytes).expect("write");
    let err = restore(&files.path("corrupt"), &mem1, true).expect_err("corrupt");
    assert!(
        matches!(err, SnapshotError::BadStateFile { .. }) && err.to_string().contains("checksum"),
        "{err}"
    );
    bytes.truncate(middle);
    std::fs::write(files.path("short"), &bytes).expect("write");
    let err = restore(&files.path("short"), &mem1, true).expect_err("truncated");
    assert!(err.to_string().contains("truncated"), "{err}");
    let short_mem = files.path("short.mem");
    std::fs::copy(&mem1, &short_mem).expect("copy");
    std::fs::File::options()
        .write(true)
        .open(&short_mem)
        .expect("open")
        .set_len(16 << 20)
        .expect("truncate");
    let err = restore(&state1, &short_mem, true).expect_err("short memory");
    assert!(
        matches!(err, SnapshotError::BadMemoryFile { .. }) && err.is_bad_input(),
        "{err}"
    );
}

#[test]
fn an_empty_placeholder_drive_is_replaced_at_restore() {
    let files = Files {
        dir: tempfile::tempdir().expect("dir"),
    };
    let kernel = files.path("counter.elf");
    std::fs::write(&kernel, elf(&counter_code())).expect("kernel");
    let (placeholder, image) = (files.path("placeholder"), files.path("image"));
    std::fs::write(&placeholder, b"").expect("placeholder");
    std::fs::File::create(&image)
        .expect("image")
        .set_len(8 << 20)
        .expect("size");
    let mut resources = VmResources::new(&kernel);
    resources.machine_config.mem_size_mib = 32;
    resources.drives.push(vmm::resources::DriveConfig {
        drive_id: "data".into(),
        path_on_host: placeholder.clone(),
        is_root_device: false,
        is_read_only: false,
        rate_limiter: None,
        io_engine: Default::default(),
    });
    let vm =
        build_microvm_with_console(&resources, BuildOptions::default(), ConsoleSink::Off, false)
            .expect("a VM boots with an empty drive");
    run_then_pause(&vm);
    let (state1, mem1) = (files.path("s1"), files.path("m1"));
    snapshot(&vm, SnapshotType::Full, &state1, &mem1);
    end(vm);
    let saved = read_state_file(&state1).expect("state");
    let blk = &saved.devices.virtio[0];
    assert_eq!(
        blk.config[..8],
        0u64.to_le_bytes(),
        "0 sectors at snapshot time"
    );

    // A clone on the real image: the device it gets has the image's capacity, and the
    // transport marks the configuration as changed.
    let overrides = RestoreOverrides {
        drives: vec![("data".into(), image.clone())],
        ..Default::default()
    };
    let vm = restore_with(&state1, &mem1, false, overrides).expect("restore onto the image");
    run_then_pause(&vm);
    let (state2, mem2) = (files.path("s2"), files.path("m2"));
    snapshot(&vm, SnapshotType::Full, &state2, &mem2);
    end(vm);
    let clone = read_state_file(&state2).expect("state");
    let blk2 = &clone.devices.virtio[0];
    assert_eq!(
        blk2.config[..8],
        (16384u64).to_le_bytes(),
        "8 MiB in sectors"
    );
    assert_ne!(blk2.config_generation, blk.config_generation);
    assert_eq!(clone.resources.drives[0].path_on_host, image);

    // And back onto another empty file: an override target may be empty too.
    let other = files.path("other-placeholder");
    std::fs::write(&other, b"").expect("placeholder");
    let overrides = RestoreOverrides {
        drives: vec![("data".into(), other)],
        ..Default::default()
    };
    let vm = restore_with(&state2, &mem2, true, overrides).expect("restore onto an empty file");
    end(vm);
}

#[test]
fn a_restore_tracks_dirty_pages_only_when_asked() {
    let files = Files {
        dir: tempfile::tempdir().expect("dir"),
    };
    let kernel = files.path("counter.elf");
    std::fs::write(&kernel, elf(&counter_code())).expect("kernel");
    let mut resources = VmResources::new(&kernel);
    resources.machine_config.mem_size_mib = 32;
    resources.machine_config.track_dirty_pages = true;
    let vm =
        build_microvm_with_console(&resources, BuildOptions::default(), ConsoleSink::Off, false)
            .expect("boot");
    run_then_pause(&vm);
    let (state1, mem1) = (files.path("s1"), files.path("m1"));
    snapshot(&vm, SnapshotType::Full, &state1, &mem1);
    end(vm);
    assert!(read_state_file(&state1).expect("state").track_dirty_pages);

    // The snapshotted VM tracked; this restore does not ask to.
    let vm = restore_params(RestoreParams {
        snapshot_path: state1.clone(),
        mem_file_path: mem1.clone(),
        overrides: Default::default(),
        resume: true,
        track_dirty_pages: false,
        seccomp: true,
    })
    .expect("restore");
    run_then_pause(&vm);
    let diff = files.path("m1-diff");
    std::fs::copy(&mem1, &diff).expect("copy the base");
    let refused = vm
        .snapshot_handle()
        .expect("handle")
        .create(&CreateSnapshotParams {
            snapshot_type: SnapshotType::Diff,
            snapshot_path: files.path("s-diff"),
            mem_file_path: diff.clone(),
        });
    assert!(
        matches!(&refused, Err(SnapshotError::NotAllowed(m)) if m.contains("dirty page tracking")),
        "{refused:?}"
    );
    let (state2, mem2) = (files.path("s2"), files.path("m2"));
    snapshot(&vm, SnapshotType::Full, &state2, &mem2);
    end(vm);
    let saved = read_state_file(&state2).expect("state");
    assert!(!saved.track_dirty_pages, "the restored VM did not track");
    assert!(!saved.resources.machine_config.track_dirty_pages);

    // Asked for, a restore of that untracked snapshot tracks.
    let vm = restore(&state2, &mem2, true).expect("restore");
    run_then_pause(&vm);
    std::fs::copy(&mem2, &diff).expect("copy the base");
    snapshot(&vm, SnapshotType::Diff, &files.path("s3"), &diff);
    end(vm);
}

#[test]
fn a_diff_into_a_missing_or_foreign_base_is_refused_and_loses_no_pages() {
    let files = Files {
        dir: tempfile::tempdir().expect("dir"),
    };
    let kernel = files.path("counter.elf");
    std::fs::write(&kernel, elf(&counter_code())).expect("kernel");
    let mut resources = VmResources::new(&kernel);
    resources.machine_config.mem_size_mib = 32;
    resources.machine_config.track_dirty_pages = true;
    let vm =
        build_microvm_with_console(&resources, BuildOptions::default(), ConsoleSink::Off, false)
            .expect("boot");
    run_then_pause(&vm);
    let (state1, mem1) = (files.path("s1"), files.path("m1"));
    snapshot(&vm, SnapshotType::Full, &state1, &mem1);
    run_then_pause(&vm);
    let diff = |state: &Path, mem: &Path| {
        vm.snapshot_handle()
            .expect("handle")
            .create(&CreateSnapshotParams {
                snapshot_type: SnapshotType::Diff,
                snapshot_path: state.into(),
                mem_file_path: mem.into(),
            })
    };
    let (state2, missing) = (files.path("s2"), files.path("missing.mem"));
    let err = diff(&state2, &missing).expect_err("no base");
    assert!(
        matches!(&err, SnapshotError::BadMemoryFile { .. })
            && err.to_string().contains("does not exist"),
        "{err}"
    );
    assert!(!missing.exists(), "no all-holes memory file was made");
    assert!(!state2.exists(), "nor a state file");
    let short = files.path("short.mem");
    std::fs::write(&short, vec![1u8; 1 << 20]).expect("short");
    let err = diff(&state2, &short).expect_err("wrong size");
    assert!(
        err.to_string()
            .contains("1048576 bytes, but the VM has 33554432 bytes of guest memory"),
        "{err}"
    );
    assert_eq!(std::fs::metadata(&short).expect("short").len(), 1 << 20);
    assert!(!state2.exists());

    // The refusals did not consume the dirty log: a diff into the real base is whole.
    let base = files.path("m1-diff");
    std::fs::copy(&mem1, &base).expect("copy the base");
    diff(&state2, &base).expect("diff");
    let (state3, mem3) = (files.path("s3"), files.path("m3"));
    snapshot(&vm, SnapshotType::Full, &state3, &mem3);
    end(vm);
    assert!(
        std::fs::read(&base).expect("diff") == std::fs::read(&mem3).expect("full"),
        "base + diff == full"
    );
}

#[test]
fn a_vm_keeps_its_pit_or_lack_of_one_across_snapshots() {
    let files = Files {
        dir: tempfile::tempdir().expect("dir"),
    };
    let kernel = files.path("counter.elf");
    std::fs::write(&kernel, elf(&counter_code())).expect("kernel");
    // No PIT: a split irqchip unless KVM's is asked for; a PIT: KVM's irqchip.
    for (pit, irqchip, split) in [
        (false, None, true),
        (false, Some(IrqchipKind::Kernel), false),
        (true, None, false),
    ] {
        let mut resources = VmResources::new(&kernel);
        resources.machine_config.mem_size_mib = 32;
        resources.machine_config.pit = pit;
        resources.machine_config.irqchip = irqchip;
        let vm = build_microvm_with_console(
            &resources,
            BuildOptions::default(),
            ConsoleSink::Off,
            false,
        )
        .expect("boot");
        run_then_pause(&vm);
        let (state1, mem1) = (files.path("pit-s1"), files.path("pit-m1"));
        snapshot(&vm, SnapshotType::Full, &state1, &mem1);
        end(vm);
        let saved = read_state_file(&state1).expect("state");
        assert_eq!(
            saved.vm.pit.is_some(),
            pit,
            "PIT state saved iff the VM had one"
        );
        assert_eq!(saved.vm.irqchips.is_empty(), split, "KVM's irqchip saved");
        assert_eq!(saved.devices.ioapic.is_some(), split, "zvm's IOAPIC saved");

        // The restored VM is given the PIT its snapshot holds (older snapshots all hold
        // one, whatever their resources say), and a snapshot of it holds it again.
        let vm = restore(&state1, &mem1, true).expect("restore");
        let before = read_u64(&mem1, COUNTER);
        run_then_pause(&vm);
        let (state2, mem2) = (files.path("pit-s2"), files.path("pit-m2"));
        snapshot(&vm, SnapshotType::Full, &state2, &mem2);
        end(vm);
        assert!(read_u64(&mem2, COUNTER) > before, "the guest ran on");
        let saved = read_state_file(&state2).expect("state");
        assert_eq!(saved.vm.pit.is_some(), pit);
        assert_eq!(saved.resources.machine_config.pit, pit);
        assert_eq!(
            saved.devices.ioapic.is_some(),
            split,
            "the same irqchip again"
        );
        assert_eq!(
            saved.resources.machine_config.irqchip_kind(),
            if split {
                IrqchipKind::Split
            } else {
                IrqchipKind::Kernel
            }
        );
    }
}
