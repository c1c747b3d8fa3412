//! Tiny hand-assembled guests run through zvm's real VM builder, buses and vCPU loop.
//! Each runs in milliseconds, even on hosts where a Linux boot takes a minute.

mod common;

use common::Console;
use std::time::Duration;
use vmm::builder::{BuildOptions, MicrovmBuilder};
use vmm::devices::serial::ConsoleSink;
use vmm::host::KvmFlavour;
use vmm::resources::CpuTemplate;
use vmm::vcpu::VcpuError;
use vmm::{RunningVm, VmOutcome};

const CODE_ADDR: u64 = 0x10_0000;

/// `out dx, al` of each byte to COM1 (0x3f8).
fn print(text: &[u8]) -> Vec<u8> {
    let mut code = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for b in text {
        code.extend_from_slice(&[0xb0, *b, 0xee]); // mov al, b; out dx, al
    }
    code
}

/// Reboot through the i8042: `mov al, 0xfe; out 0x64, al`, then `hlt`.
const RESET: [u8; 5] = [0xb0, 0xfe, 0xe6, 0x64, 0xf4];

struct TinyGuest {
    vcpus: u8,
    irqchip: bool,
    /// A split irqchip (zvm's IOAPIC) rather than KVM's PIC and IOAPIC.
    split: bool,
    code: Vec<u8>,
    extra: Vec<(u64, Vec<u8>)>,
}

impl TinyGuest {
    fn new(code: Vec<u8>) -> Self {
        TinyGuest {
            vcpus: 1,
            irqchip: true,
            split: true,
            code,
            extra: Vec::new(),
        }
    }

    fn start(&self) -> (RunningVm, Console) {
        let opts = BuildOptions {
            irqchip: self.irqchip,
            split_irqchip: self.split,
            ..Default::default()
        };
        let mut builder =
            MicrovmBuilder::new(64, self.vcpus, CpuTemplate::Auto, true, opts).expect("build VM");
        let console = Console::default();
        builder
            .attach_serial(ConsoleSink::Writer(Box::new(console.clone())), false, false)
            .expect("serial");
        builder.attach_i8042().expect("i8042");
        builder.attach_acpi_pm().expect("ACPI power management");
        builder.attach_boot_timer().expect("boot timer");
        for (addr, bytes) in &self.extra {
            vm_memory::Bytes::write_slice(builder.memory(), bytes, vm_memory::GuestAddress(*addr))
                .expect("code");
        }
        let entry = builder.load_raw_code(&self.code, CODE_ADDR).expect("load");
        (builder.start(entry).expect("start"), console)
    }

    /// Runs to the end, stopping the VM if it has not ended after `limit`.
    fn run(
        &self,
        limit: Duration,
    ) -> (
        VmOutcome,
        Console,
        Option<vmm::devices::boot_timer::BootTime>,
    ) {
        let (vm, console) = self.start();
        let stop = vm.stop_handle().expect("stop handle");
        let watchdog = std::thread::spawn(move || {
            std::thread::sleep(limit);
            let _ = stop.request_stop();
        });
        let (outcome, boot_time) = vm.wait_with_boot_time();
        drop(watchdog);
        (outcome, console, boot_time)
    }
}

#[test]
fn serial_output_reaches_the_console_and_reset_ends_the_vm() {
    let mut code = print(b"hello from a tiny guest\n");
    code.extend_from_slice(&RESET);
    let (outcome, console, _) = TinyGuest::new(code).run(Duration::from_secs(30));
    assert_eq!(outcome, VmOutcome::Reboot);
    assert_eq!(console.text(), "hello from a tiny guest\n");
}

/// `mov dx, port; mov al, value; out dx, al`, then `hlt` in a loop.
fn out_then_halt(port: u16, value: u8) -> Vec<u8> {
    let [lo, hi] = port.to_le_bytes();
    vec![0x66, 0xba, lo, hi, 0xb0, value, 0xee, 0xf4, 0xeb, 0xfd]
}

#[test]
fn an_acpi_power_off_ends_the_vm_as_powered_off() {
    // SLP_TYP 5 (the DSDT's _S5) with SLP_EN into the FADT's sleep control register.
    let code = out_then_halt(vmm::layout::ACPI_PM_PORT, (5 << 2) | (1 << 5));
    let (outcome, _, _) = TinyGuest::new(code).run(Duration::from_secs(30));
    assert_eq!(outcome, VmOutcome::Poweroff);
    assert!(outcome.is_clean());
}

#[test]
fn the_acpi_reset_register_reboots() {
    let code = out_then_halt(vmm::layout::ACPI_PM_PORT + 2, 0x0f);
    let (outcome, _, _) = TinyGuest::new(code).run(Duration::from_secs(30));
    assert_eq!(outcome, VmOutcome::Reboot);
}

#[test]
fn a_guest_that_ignores_the_power_button_is_stopped_after_the_grace_period() {
    // cli; hlt forever: the button's interrupt never reaches it.
    let (vm, _console) = TinyGuest::new(vec![0xfa, 0xf4, 0xeb, 0xfd]).start();
    assert!(vm.power_button().expect("button").is_some());
    let asked = std::time::Instant::now();
    vm.shutdown_handle()
        .expect("handle")
        .request(Duration::from_millis(300))
        .expect("request");
    let stop = vm.stop_handle().expect("stop handle");
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(30));
        let _ = stop.request_stop();
    });
    let outcome = vm.wait();
    let took = asked.elapsed();
    drop(watchdog);
    assert_eq!(outcome, VmOutcome::Stopped);
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(10),
        "stopped after {took:?}"
    );
}

#[test]
fn the_acpi_tables_are_in_guest_memory() {
    let mut builder = MicrovmBuilder::new(64, 2, CpuTemplate::Auto, true, BuildOptions::default())
        .expect("build VM");
    builder.load_raw_code(&[0xf4], CODE_ADDR).expect("load");
    let mut rsdp = [0u8; 36];
    vm_memory::Bytes::read_slice(
        builder.memory(),
        &mut rsdp,
        vm_memory::GuestAddress(vmm::layout::ACPI_START),
    )
    .expect("read");
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    assert_eq!(rsdp.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
}

#[test]
fn hlt_without_irqchip_ends_the_vm() {
    let mut guest = TinyGuest::new(vec![0xf4]);
    guest.irqchip = false;
    let (outcome, _, _) = guest.run(Duration::from_secs(30));
    assert_eq!(outcome, VmOutcome::Halted);
}

#[test]
fn triple_fault_is_reported_with_registers() {
    // ud2 with an empty IDT: #UD cannot be delivered -> #DF -> triple fault.
    let (outcome, _, _) = TinyGuest::new(vec![0x90, 0x0f, 0x0b]).run(Duration::from_secs(30));
    let VmOutcome::Failed(VcpuError::TripleFault { index, regs }) = &outcome else {
        panic!("expected a triple fault, got {outcome:?}");
    };
    assert_eq!(*index, 0);
    assert!(
        regs.contains("rip=0x10000"),
        "registers name the faulting RIP: {regs}"
    );
    assert!(outcome_text(&outcome).contains("triple fault"));
}

fn outcome_text(outcome: &VmOutcome) -> String {
    match outcome {
        VmOutcome::Failed(e) => e.to_string(),
        other => format!("{other:?}"),
    }
}

#[test]
fn boot_timer_write_is_recorded() {
    // mov rax, 0xd000_0000; mov byte [rax], 123; then reset.
    let mut code = vec![
        0x48, 0xb8, 0x00, 0x00, 0x00, 0xd0, 0, 0, 0, 0, 0xc6, 0x00, 123,
    ];
    code.extend_from_slice(&RESET);
    let (outcome, _, boot_time) = TinyGuest::new(code).run(Duration::from_secs(30));
    assert_eq!(outcome, VmOutcome::Reboot);
    let t = boot_time.expect("the boot timer recorded the write");
    assert!(t.since_process_start >= t.since_build_start);
}

#[test]
fn unknown_ports_and_mmio_are_harmless() {
    // in al, 0x99 (nobody there: reads 0xff); write to an unclaimed MMIO address; print al.
    let mut code = vec![0xe4, 0x99, 0x88, 0xc3]; // in al,0x99; mov bl,al
    code.extend_from_slice(&[
        0x48, 0xb8, 0x00, 0x50, 0x00, 0xd0, 0, 0, 0, 0, 0xc6, 0x00, 0x01,
    ]); // mov byte [0xd0005000],1
    code.extend_from_slice(&[0x66, 0xba, 0xf8, 0x03, 0x88, 0xd8, 0xee]); // mov dx,0x3f8; mov al,bl; out dx,al
    code.extend_from_slice(&RESET);
    let (outcome, console, _) = TinyGuest::new(code).run(Duration::from_secs(30));
    assert_eq!(outcome, VmOutcome::Reboot);
    assert_eq!(console.0.lock().expect("console").as_slice(), &[0xff]);
}

#[test]
fn the_guest_sees_a_pic_only_with_kvms_irqchip_and_an_ioapic_either_way() {
    let mut code = vec![0xe4, 0x21]; // in al, 0x21 (the master PIC's mask)
    code.extend_from_slice(&[0x66, 0xba, 0xf8, 0x03, 0xee]); // mov dx, 0x3f8; out dx, al
    code.extend_from_slice(&[0xb8, 0x00, 0x00, 0xc0, 0xfe]); // mov eax, 0xfec00000
    code.extend_from_slice(&[0xc7, 0x00, 0x01, 0, 0, 0]); // IOREGSEL = 1 (version)
    code.extend_from_slice(&[0x8b, 0x48, 0x10, 0x88, 0xc8, 0xee]); // ecx = IOWIN; out cl
    code.extend_from_slice(&[0xc1, 0xe9, 0x10, 0x88, 0xc8, 0xee]); // out (ecx >> 16) & 0xff
    code.extend_from_slice(&[0xb8, 0x00, 0x00, 0xc0, 0xfe]); // mov eax, 0xfec00000 (again)
    code.extend_from_slice(&[0xc7, 0x00, 0x18, 0, 0, 0]); // IOREGSEL = pin 4's low half
    code.extend_from_slice(&[0xc7, 0x40, 0x10, 0x30, 0, 0, 0]); // IOWIN = vector 0x30, unmasked
    code.extend_from_slice(&[0x8b, 0x48, 0x10, 0x88, 0xc8, 0xee]); // out the entry read back
    code.extend_from_slice(&RESET);
    for (split, pic_mask) in [(true, 0xff), (false, 0x00)] {
        let mut guest = TinyGuest::new(code.clone());
        guest.split = split;
        let (outcome, console, _) = guest.run(Duration::from_secs(30));
        assert_eq!(outcome, VmOutcome::Reboot, "split: {split}");
        // No PIC reads all ones; an IOAPIC of version 0x11 with 24 entries (0x17) either
        // way, and pin 4's entry written and read back (its route installed in KVM).
        assert_eq!(
            console.0.lock().expect("console").as_slice(),
            &[pic_mask, 0x11, 0x17, 0x30],
            "split: {split}"
        );
    }
}

#[test]
fn two_vcpus_run_guest_code() {
    let mut code = print(b"x");
    code.push(0xf4);
    let mut guest = TinyGuest::new(code);
    guest.vcpus = 2;
    guest.irqchip = false;
    let (outcome, console, _) = guest.run(Duration::from_secs(30));
    assert_eq!(outcome, VmOutcome::Halted, "both vCPUs halted");
    assert_eq!(console.text(), "xx", "each vCPU printed once");
}

#[test]
fn application_processor_starts_through_init_and_sipi() {
    // The BSP enables its local APIC and sends INIT, SIPI, SIPI to APIC 1 with vector
    // 0x08; the AP starts in real mode at 0x8000, prints 'A' and resets the VM.
    let mut bsp = vec![0x48, 0xbb, 0x00, 0x00, 0xe0, 0xfe, 0, 0, 0, 0]; // mov rbx, 0xfee00000
    bsp.extend_from_slice(&[0xc7, 0x83, 0xf0, 0x00, 0x00, 0x00, 0xff, 0x01, 0x00, 0x00]); // SVR = 0x1ff
    bsp.extend_from_slice(&[0xc7, 0x83, 0x10, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01]); // ICR hi = APIC 1
    bsp.extend_from_slice(&[0xc7, 0x83, 0x00, 0x03, 0x00, 0x00, 0x00, 0x45, 0x00, 0x00]); // INIT
    for _ in 0..2 {
        bsp.extend_from_slice(&[0xc7, 0x83, 0x00, 0x03, 0x00, 0x00, 0x08, 0x46, 0x00, 0x00]);
        // SIPI 0x08
    }
    bsp.extend_from_slice(&[0xf4, 0xeb, 0xfd]); // hlt; jmp back
    let ap = vec![
        0xba, 0xf8, 0x03, 0xb0, b'A', 0xee, 0xb0, 0xfe, 0xe6, 0x64, 0xf4,
    ]; // 16-bit
    let mut guest = TinyGuest::new(bsp);
    guest.vcpus = 2;
    guest.extra.push((0x8000, ap));
    let (outcome, console, _) = guest.run(Duration::from_secs(60));
    assert_eq!(
        console.text(),
        "A",
        "the AP ran its real-mode start-up code"
    );
    assert_eq!(outcome, VmOutcome::Reboot);
}

#[test]
fn instructions_the_host_cannot_run_are_reported_not_hung() {
    // FWAIT in guest kernel mode: KVM PVM's emulator stops the VM on it; VMX/SVM run it.
    let mut code = vec![0x9b];
    code.extend_from_slice(&print(b"ok"));
    code.extend_from_slice(&RESET);
    let (outcome, console, _) = TinyGuest::new(code).run(Duration::from_secs(30));
    if KvmFlavour::detect() == KvmFlavour::Pvm {
        let VmOutcome::Failed(VcpuError::Internal {
            meaning,
            bytes,
            regs,
            ..
        }) = &outcome
        else {
            panic!("expected an emulation failure on this PVM host, got {outcome:?}");
        };
        assert_eq!(*meaning, "emulation failure");
        assert!(
            bytes.starts_with("9b 66 ba f8 03"),
            "instruction bytes at RIP: {bytes}"
        );
        assert!(regs.contains("rip=0x100000"), "{regs}");
    } else {
        assert_eq!(outcome, VmOutcome::Reboot);
        assert_eq!(console.text(), "ok");
    }
}

#[test]
fn a_stop_request_ends_a_spinning_guest() {
    // jmp $ forever; the VMM's stop request must still end the VM promptly.
    let (outcome, _, _) = TinyGuest::new(vec![0xeb, 0xfe]).run(Duration::from_millis(300));
    assert_eq!(outcome, VmOutcome::Stopped);
}

#[test]
fn pause_stops_guest_progress_and_resume_restarts_it() {
    // An endless loop printing 'p': while paused the console must not grow.
    let code = vec![0x66, 0xba, 0xf8, 0x03, 0xb0, b'p', 0xee, 0xeb, 0xfb];
    let (vm, console) = TinyGuest::new(code).start();
    let len = || console.0.lock().expect("console").len();
    std::thread::sleep(Duration::from_millis(100));
    vm.pause().expect("pause");
    assert!(vm.is_paused());
    let at_pause = len();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(len(), at_pause, "no guest progress while paused");
    vm.resume();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while len() == at_pause && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(len() > at_pause, "the guest runs again after resume");
    vm.stop_handle()
        .expect("stop")
        .request_stop()
        .expect("stop");
    assert_eq!(vm.wait(), VmOutcome::Stopped);
}

/// `out 0x80, al; jmp` back to it, forever: a VM exit every few instructions.
const EXIT_LOOP: [u8; 4] = [0xe6, 0x80, 0xeb, 0xfc];
/// `jmp $`: no VM exit at all, only a kick gets the vCPU out of KVM_RUN.
const SPIN: [u8; 2] = [0xeb, 0xfe];

#[test]
fn pause_resume_and_stop_many_times_never_hang() {
    // Each pause kicks every vCPU once and nothing retries: a kick lost between a vCPU's
    // look at its requests and its next KVM_RUN (a pause right after a resume lands
    // there) would leave that pause waiting for its bound and failing. (The first
    // version of this test found a resume and a pause read as one event and never
    // kicked.)
    for code in [&SPIN[..], &EXIT_LOOP[..]] {
        let mut guest = TinyGuest::new(code.to_vec());
        guest.vcpus = 2;
        guest.irqchip = false;
        let (vm, _console) = guest.start();
        let started = std::time::Instant::now();
        let mut slowest = Duration::ZERO;
        for round in 0..300 {
            let t = std::time::Instant::now();
            vm.pause()
                .unwrap_or_else(|e| panic!("pause {round} failed: {e}"));
            slowest = slowest.max(t.elapsed());
            assert!(vm.is_paused());
            vm.resume();
            // Some rounds pause again at once (the resume and the pause can reach the VMM
            // as one event), others after the vCPUs are back in the guest.
            std::thread::sleep(Duration::from_micros(round % 4 * 50));
        }
        println!(
            "{code:02x?}: 300 pause/resume rounds in {:?}, slowest pause {slowest:?}",
            started.elapsed()
        );
        assert!(
            slowest < Duration::from_secs(1),
            "slowest pause {slowest:?}"
        );
        // A stop while paused ends the VM too.
        vm.pause().expect("pause");
        vm.stop_handle()
            .expect("stop")
            .request_stop()
            .expect("stop");
        assert_eq!(vm.wait(), VmOutcome::Stopped);
        // Stops right after the start race the vCPU threads' first KVM_RUN.
        for round in 0..20 {
            let t = std::time::Instant::now();
            let (vm, _console) = guest.start();
            vm.stop_handle()
                .expect("stop")
                .request_stop()
                .expect("stop");
            assert_eq!(vm.wait(), VmOutcome::Stopped, "round {round}");
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "stop {round} took {:?}",
                t.elapsed()
            );
        }
    }
}
