//! vCPU tests: pause and save requests, exit counting, error rendering.

use super::*;

#[test]
fn pause_parks_until_resume_and_stop_releases() {
    let control = Arc::new(VcpuControl::default());
    control.request_pause();
    let c = control.clone();
    let parked = std::thread::spawn(move || {
        c.park_if_paused(0, &mut || Err("no state".into()));
        c.stop_requested()
    });
    assert!(
        control.wait_parked(1, std::time::Duration::from_secs(5)),
        "the thread parked"
    );
    assert_eq!(control.parked(), 1);
    control.resume();
    assert!(!parked.join().expect("join"), "resumed, not stopped");
    control.request_pause();
    let c = control.clone();
    let stopped = std::thread::spawn(move || {
        c.park_if_paused(0, &mut || Err("no state".into()));
        c.stop_requested()
    });
    assert!(control.wait_parked(1, std::time::Duration::from_secs(5)));
    control.request_stop();
    assert!(
        stopped.join().expect("join"),
        "a stop releases a parked vCPU"
    );
    assert!(!control.wait_parked(2, std::time::Duration::from_millis(10)));
}

#[test]
fn parked_vcpus_save_their_state_on_request() {
    let control = Arc::new(VcpuControl::default());
    assert!(
        control
            .save_parked(1, std::time::Duration::from_millis(10))
            .is_err(),
        "not paused"
    );
    control.request_pause();
    let c = control.clone();
    let saves = std::thread::spawn(move || {
        let mut count = 0;
        c.park_if_paused(0, &mut || {
            count += 1;
            Err(format!("save {count}"))
        });
        count
    });
    assert!(control.wait_parked(1, std::time::Duration::from_secs(5)));
    let err = control
        .save_parked(1, std::time::Duration::from_secs(5))
        .expect_err("the save failed");
    assert_eq!(err, "vCPU 0: save 1");
    assert!(control
        .save_parked(1, std::time::Duration::from_secs(5))
        .is_err());
    control.resume();
    assert_eq!(saves.join().expect("join"), 2, "one save per request");
}

#[test]
fn exits_are_counted_by_kind() {
    use crate::builder::{BuildOptions, MicrovmBuilder};
    use crate::resources::CpuTemplate;
    let opts = BuildOptions {
        irqchip: false,
        ..Default::default()
    };
    let mut b = MicrovmBuilder::new(64, 1, CpuTemplate::Auto, true, opts).expect("VM");
    b.attach_boot_timer().expect("boot timer");
    // out 0x80, al (twice); in al, 0x80; mov rbx, 0xd000_0000 (the boot timer);
    // mov [rbx], al; mov al, [rbx]; hlt.
    let mut code = vec![0xe6, 0x80, 0xe6, 0x80, 0xe4, 0x80, 0x48, 0xbb];
    code.extend(0xd000_0000u64.to_le_bytes());
    code.extend([0x88, 0x03, 0x8a, 0x03, 0xf4]);
    let entry = b.load_raw_code(&code, 0x10_0000).expect("load");
    let vm = b.start(entry).expect("start");
    let metrics = vm.metrics();
    assert_eq!(vm.wait(), crate::VmOutcome::Halted);
    let m = metrics.vcpu().totals();
    let count = |name: &str| m[name].as_u64().unwrap_or(u64::MAX);
    assert_eq!((count("exit_io_out"), count("exit_io_in")), (2, 1), "{m:?}");
    assert_eq!(
        (count("exit_mmio_write"), count("exit_mmio_read")),
        (1, 1),
        "{m:?}"
    );
    assert_eq!((count("exit_hlt"), count("failures")), (1, 0), "{m:?}");
    // KVM's own counters see the same exits (it may count more of its own).
    let kvm = metrics.report()["kvm"].clone();
    if metrics.kvm().vcpu_count() == 0 {
        println!("skipped KVM's counters: no KVM_GET_STATS_FD on this kernel");
        return;
    }
    let kvm_count = |name: &str| kvm[name].as_u64().unwrap_or(0);
    // (Port I/O is io_exits on VMX/SVM; KVM's PVM flavour counts it as emulation.)
    assert!(kvm.get("io_exits").is_some(), "{kvm}");
    assert!(kvm_count("mmio_exits") >= 2, "{kvm}");
    assert!(kvm_count("exits") >= 6, "{kvm}");
}

#[test]
fn internal_error_suberrors_have_names() {
    assert_eq!(internal_error_meaning(1), "emulation failure");
    assert_eq!(internal_error_meaning(99), "unknown");
}

#[test]
fn errors_render_on_one_line() {
    let e = VcpuError::Internal {
        index: 0,
        suberror: 1,
        meaning: "emulation failure",
        bytes: "0f ae 27".into(),
        regs: "rip=0x1".into(),
    };
    let text = e.to_string();
    assert!(!text.contains('\n'));
    assert!(
        text.contains("emulation failure") && text.contains("0f ae 27") && text.contains("rip=0x1")
    );
}

#[test]
fn a_kick_before_kvm_run_makes_it_return_at_once() {
    use crate::builder::{BuildOptions, MicrovmBuilder};
    use crate::resources::CpuTemplate;
    let opts = BuildOptions {
        irqchip: false,
        ..Default::default()
    };
    let mut b = MicrovmBuilder::new(64, 1, CpuTemplate::Auto, true, opts).expect("VM");
    // jmp $: without the kick KVM_RUN would spin until a signal interrupts it.
    let entry = b.load_raw_code(&[0xeb, 0xfe], 0x10_0000).expect("load");
    let mut vcpu = b.create_vcpus(None).expect("vCPU").remove(0);
    crate::arch::regs::set_boot_state(&vcpu.fd, entry).expect("boot state");
    kick::install_handler();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let runner = std::thread::spawn(move || {
        let target = kick::KickTarget::register(&mut vcpu.fd);
        // The kick lands after any look at requests and before KVM_RUN.
        // SAFETY: signals this very thread; the handler only writes its kvm_run.
        unsafe { libc::pthread_kill(libc::pthread_self(), kick::kick_signal()) };
        let result = vcpu.fd.run().map(|_| ()).map_err(|e| e.errno());
        let _ = done_tx.send(());
        drop(target);
        result
    });
    if done_rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .is_err()
    {
        // Interrupt the lost run so the test ends, then fail.
        kick::kick(&runner);
        panic!("the kick before KVM_RUN was lost");
    }
    let result = runner.join().expect("join");
    assert_eq!(result, Err(libc::EINTR));
}
