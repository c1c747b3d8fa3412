//! Boots the project's guest kernel under zvm, the way a user does, and checks what the
//! guest kernel and the guest's userspace report. Boots are slow on KVM PVM hosts (tens
//! of seconds of emulated kernel code each), so each boot checks many things at once.

use std::time::Duration;
use vmm::resources::DEFAULT_BOOT_ARGS;
use vmm::{VmOutcome, VmResources};

use zvm_integration_tests::{
    busybox_initramfs, ext4_image, guest_kernel, read_from_ext4, run_zvm, run_zvm_in,
    test_initramfs, tiny_guest_kernel, NetNs,
};

/// Upper bound for one boot here; a VMX host needs a fraction of a second.
const BOOT_LIMIT: Duration = Duration::from_secs(600);

/// Resources for the project's kernel with `initrd` and extra kernel arguments.
fn resources(cpus: u8, initrd: std::path::PathBuf, extra_args: &str) -> VmResources {
    let mut r = VmResources::new(guest_kernel());
    r.boot_source.initrd_path = Some(initrd);
    r.boot_source.boot_args = Some(format!("{DEFAULT_BOOT_ARGS} {extra_args}"));
    r.machine_config.vcpu_count = cpus;
    r.machine_config.mem_size_mib = 256;
    r
}

/// The guest half of the device checks, run by busybox's sh inside the VM.
const DEVICE_SCRIPT: &str = r#"
# Keep kernel messages off the console from here on, so they cannot split these lines.
dmesg -n 1
echo "shell: $(nproc) cpus, kernel $(uname -r)"
ls /bin/busybox && echo shell-ok
mkdir -p /mnt/rw /mnt/ro
mount -t ext4 /dev/vda /mnt/rw && echo "rw disk says: $(cat /mnt/rw/hello.txt)"
echo written-by-guest > /mnt/rw/from-guest.txt && sync && umount /mnt/rw && echo rw-disk-written
mount -t ext4 -o ro /dev/vdb /mnt/ro && echo "ro disk says: $(cat /mnt/ro/hello.txt)"
umount /mnt/ro
if dd if=/dev/zero of=/dev/vdb bs=512 count=1 conv=fsync 2>/dev/null; then echo ro-disk-write-succeeded; else echo ro-disk-write-refused; fi
echo "hwrng: $(cat /sys/devices/virtual/misc/hw_random/rng_current)"
echo "hwrng-count: $(head -c 32 /dev/hwrng | wc -c)"
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && echo net-up
echo "net-queues: $(ls /sys/class/net/eth0/queues | tr '\n' ' ')"
echo "tcp-reply: $(taskset 2 zvm-vsock-tool tcp-send 10.0.2.1:7777 ping-over-tap)"
timeout 120 zvm-vsock-tool echo-server 5000 &
echo "vsock-reply: $(zvm-vsock-tool send 2 6000 ping-from-guest)"
wait
echo vsock-echo-server-done
"#;

#[test]
fn zvm_run_boots_two_vcpus_with_disks_rng_net_and_vsock() {
    // Through the `zvm` command, as a user runs it: console on stdout, zvm's report on
    // stderr, exit code 0 when the guest ends the VM. One boot checks SMP, a busybox
    // shell, a read-write virtio disk served off the VMM thread (io=async: io_uring here)
    // and a read-only one served on it, the virtio entropy device, a multiqueue
    // virtio-net interface (two queue pairs, the guest's TCP sent from its second vCPU)
    // on a tap in a network namespace the test owns, and vsock in
    // both directions; the guest finds its CPUs and every device through ACPI alone (no
    // `virtio_mmio.device=` parameters) and ends with an ACPI power-off.
    let dir = zvm_integration_tests::scratch_dir();
    let rw = dir.join("rw.ext4");
    let ro = dir.join("ro.ext4");
    ext4_image(&rw, 16, &[("hello.txt", "hello from the host (rw)")]);
    ext4_image(&ro, 16, &[("hello.txt", "hello from the host (ro)")]);
    let ro_before = std::fs::read(&ro).expect("ro image");
    let initrd = busybox_initramfs(DEVICE_SCRIPT);
    let kernel = guest_kernel();
    let cmdline = format!("{DEFAULT_BOOT_ARGS} zvm.mode=script zvm.end=poweroff");
    let rw_disk = format!("path={},id=rootless,io=async", rw.display());
    let ro_disk = format!("path={},readonly=on", ro.display());

    // The network: a tap in a namespace of our own, a TCP echo peer on its host side.
    let ns = NetNs::new("boot");
    ns.exec(&[
        "ip",
        "tuntap",
        "add",
        "dev",
        "zvmtap0",
        "mode",
        "tap",
        "vnet_hdr",
        "multi_queue",
    ]);
    ns.exec(&["ip", "addr", "add", "10.0.2.1/24", "dev", "zvmtap0"]);
    ns.exec(&["ip", "link", "set", "zvmtap0", "up"]);
    let tcp_peer = ns.spawn(|| {
        let listener = std::net::TcpListener::bind("10.0.2.1:7777").expect("bind in the namespace");
        let (mut conn, from) = listener.accept().expect("the guest connects");
        let mut got = String::new();
        std::io::Read::read_to_string(&mut conn, &mut got).expect("read");
        std::io::Write::write_all(&mut conn, format!("echo:{got}").as_bytes()).expect("reply");
        (got, from.ip().to_string())
    });

    // vsock: the guest connects to host port 6000 (<uds>_6000); the host connects to the
    // guest's port 5000 through the CONNECT handshake on <uds>.
    let uds = dir.join("vsock.sock");
    let host_listener = std::os::unix::net::UnixListener::bind(format!("{}_6000", uds.display()))
        .expect("bind uds_6000");
    let vsock_in = std::thread::spawn(move || {
        let (mut conn, _) = host_listener
            .accept()
            .expect("the guest connects over vsock");
        let mut got = String::new();
        std::io::Read::read_to_string(&mut conn, &mut got).expect("read");
        std::io::Write::write_all(&mut conn, format!("host-echo:{got}").as_bytes()).expect("reply");
        got
    });
    let uds_for_client = uds.clone();
    let vsock_out = std::thread::spawn(move || host_connects_to_guest(&uds_for_client, 5000));
    let vsock = format!("cid=3,uds={}", uds.display());
    let args = [
        "run",
        "--kernel",
        kernel.to_str().expect("utf8"),
        "--initrd",
        initrd.to_str().expect("utf8"),
        "--cpus",
        "2",
        "--memory",
        "256M",
        "--cmdline",
        &cmdline,
        "--console-timestamps",
        "--verbose",
        "--disk",
        &rw_disk,
        "--disk",
        &ro_disk,
        "--rng",
        "--net",
        "tap=zvmtap0,mac=02:00:00:00:00:05,queues=2",
        "--vsock",
        &vsock,
        "--no-cmdline-devices",
    ];
    let run = run_zvm_in(Some(&ns), &args, BOOT_LIMIT);
    let console = &run.stdout;
    let show = || {
        format!(
            "exit {:?}\nstderr:\n{}\nconsole tail:\n{}",
            run.code,
            run.stderr,
            console
                .lines()
                .rev()
                .take(120)
                .collect::<Vec<_>>()
                .join("\n")
        )
    };
    for needle in [
        "smp: Brought up 1 node, 2 CPUs",
        "virtio_blk virtio0: [vda]",
        "virtio_blk virtio1: [vdb]",
        "Run /init as init process",
        "zvm-guest: userspace reached: init is pid 1, 2 cpus online",
        "shell: 2 cpus, kernel 6.1",
        "shell-ok",
        "rw disk says: hello from the host (rw)",
        "rw-disk-written",
        "ro disk says: hello from the host (ro)",
        "ro-disk-write-refused",
        "hwrng: virtio_rng.0",
        "hwrng-count: 32",
        "net-up",
        "net-queues: rx-0 rx-1 tx-0 tx-1 ",
        "tcp-reply: echo:ping-over-tap",
        "vsock-reply: host-echo:ping-from-guest",
        "vsock-echo-server-done",
        "zvm-guest: script exited with 0",
    ] {
        assert!(
            console.contains(needle),
            "console lacks {needle:?}: {}",
            show()
        );
    }
    assert!(
        console.lines().all(|l| l.starts_with("[zvm +")),
        "every console line is timestamped: {}",
        show()
    );
    assert!(run.stderr.contains("host KVM flavour"), "{}", show());
    assert!(
        run.stderr.contains("zvm: guest reached userspace "),
        "zvm reports the boot time: {}",
        show()
    );
    assert!(run.stderr.contains("zvm: guest powered off"), "{}", show());
    assert!(
        !console.contains("virtio_mmio.device="),
        "the devices came from ACPI alone: {}",
        show()
    );
    assert_eq!(run.code, Some(0), "{}", show());
    // After the VM: the guest's write is in the image; the read-only image is untouched.
    assert_eq!(
        read_from_ext4(&rw, "from-guest.txt").trim(),
        "written-by-guest"
    );
    assert!(
        std::fs::read(&ro).expect("ro image") == ro_before,
        "the read-only image changed"
    );
    let (tcp_got, tcp_from) = tcp_peer.join().expect("tcp peer");
    assert_eq!(
        (tcp_got.as_str(), tcp_from.as_str()),
        ("ping-over-tap", "10.0.2.15")
    );
    assert_eq!(vsock_in.join().expect("vsock listener"), "ping-from-guest");
    assert_eq!(
        vsock_out.join().expect("vsock client"),
        "ping-from-host",
        "the guest echoed over vsock"
    );
}

/// Connects to the guest's vsock `port` through zvm's `CONNECT` handshake, retrying until
/// the guest listens; sends a message and returns the guest's echo.
fn host_connects_to_guest(uds: &std::path::Path, port: u32) -> String {
    use std::io::{BufRead, BufReader, Read, Write};
    let deadline = std::time::Instant::now() + BOOT_LIMIT;
    while std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        let Ok(mut conn) = std::os::unix::net::UnixStream::connect(uds) else {
            continue;
        };
        if conn
            .write_all(format!("CONNECT {port}\n").as_bytes())
            .is_err()
        {
            continue;
        }
        let mut reader = BufReader::new(conn.try_clone().expect("clone"));
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() || !line.starts_with("OK ") {
            continue; // the guest is not listening yet: zvm closed the connection
        }
        conn.write_all(b"ping-from-host").expect("send over vsock");
        conn.shutdown(std::net::Shutdown::Write)
            .expect("half-close");
        let mut echo = String::new();
        reader.read_to_string(&mut echo).expect("read the echo");
        return echo;
    }
    String::from("never connected")
}

#[test]
fn a_corrupt_kernel_is_refused_with_a_clear_error() {
    let kernel = std::fs::read(guest_kernel()).expect("kernel");
    let dir = zvm_integration_tests::scratch_dir();
    // A vmlinux cut short: the ELF header promises segments the file does not hold.
    let truncated = dir.join("truncated-vmlinux");
    std::fs::write(&truncated, &kernel[..64 * 1024]).expect("write");
    let mut r = VmResources::new(&truncated);
    r.console = vmm::ConsoleConfig::Off;
    let err = vmm::build_microvm(&r, Default::default()).expect_err("truncated kernel");
    let text = err.to_string();
    assert!(
        text.contains("could not be loaded as ELF vmlinux"),
        "{text}"
    );
    // Random bytes: not a kernel at all.
    let garbage = dir.join("garbage-kernel");
    std::fs::write(&garbage, vec![0x5a; 1 << 20]).expect("write");
    let r = VmResources {
        boot_source: vmm::resources::BootSource {
            kernel_image_path: garbage,
            boot_args: None,
            initrd_path: None,
        },
        ..r
    };
    let text = vmm::build_microvm(&r, Default::default())
        .expect_err("garbage")
        .to_string();
    assert!(text.contains("is not a kernel"), "{text}");
}

#[test]
fn a_tinyconfig_kernel_from_a_config_file_brings_up_two_vcpus_and_system_calls_work() {
    // A second kernel, unlike the project's: `make tinyconfig` plus SMP, PVH and the
    // serial console; no ACPI (its CPUs come from the MP table, its devices from the
    // command line) and no kvmclock. Booted the way Firecracker users do,
    // `zvm --config-file vm.json --no-api`, with init's system-call self-check: one boot
    // for the three (the project's kernel boots in the device test and the snapshot test).
    let dir = zvm_integration_tests::scratch_dir();
    let config = dir.join("vm.json");
    let cmdline = format!("{DEFAULT_BOOT_ARGS} zvm.mode=syscalls zvm.check=two-vcpus");
    let doc = serde_json::json!({
        "boot-source": {
            "kernel_image_path": tiny_guest_kernel(),
            "initrd_path": test_initramfs(),
            "boot_args": cmdline,
        },
        // Without kvmclock the kernel calibrates its clocks against the PIT (and panics
        // with "IO-APIC + timer doesn't work!" without one).
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 256, "pit": true},
    });
    std::fs::write(&config, doc.to_string()).expect("write config");
    let run = run_zvm(
        &["--config-file", config.to_str().expect("utf8"), "--no-api"],
        BOOT_LIMIT,
    );
    let show = || {
        format!(
            "exit {:?}\nstderr:\n{}\nconsole:\n{}",
            run.code, run.stderr, run.stdout
        )
    };
    for needle in [
        // The kernel's own milestones.
        "Linux version 6.1",
        "-zvm-tiny",
        &format!("Kernel command line: {cmdline}"),
        "smp: Brought up 1 node, 2 CPUs",
        "Unpacking initramfs",
        "Run /init as init process",
        // The guest's userspace, through the system-call path.
        "zvm-guest: userspace reached: init is pid 1, 2 cpus online",
        "zvm-guest: syscall check passed: ",
    ] {
        assert!(
            run.stdout.contains(needle),
            "console lacks {needle:?}: {}",
            show()
        );
    }
    assert!(!run.stdout.contains("ACPI"), "{}", show());
    assert!(!run.stdout.contains("FAILED"), "{}", show());
    // (This kernel has no /dev/mem, so its init cannot write the boot timer; the device
    // test checks zvm reports it.)
    assert!(
        run.stderr.contains("zvm: guest rebooted; VM ended"),
        "{}",
        show()
    );
    assert_eq!(run.code, Some(0), "{}", show());
}

#[test]
fn a_bzimage_is_entered_through_the_64_bit_boot_protocol() {
    use vm_memory::{Bytes, GuestAddress};
    use vmm::arch::regs::BootEntry;
    use vmm::builder::{BuildOptions, MicrovmBuilder};
    use vmm::devices::serial::ConsoleSink;
    // The build script leaves the bzImage beside the vmlinux.
    let bzimage = guest_kernel().with_file_name("bzImage");
    let initrd = test_initramfs();
    let r = resources(1, initrd.clone(), "zvm.mode=marker");
    let r = VmResources {
        boot_source: vmm::resources::BootSource {
            kernel_image_path: bzimage,
            ..r.boot_source
        },
        ..r
    };
    let mut builder =
        MicrovmBuilder::new(256, 1, Default::default(), true, BuildOptions::default()).expect("VM");
    builder
        .attach_serial(ConsoleSink::Off, false, false)
        .expect("serial");
    builder.attach_i8042().expect("i8042");
    let entry = builder.load_kernel(&r).expect("bzImage loads");
    let BootEntry::Linux64 { entry, zero_page } = entry else {
        panic!("bzImage must use the 64-bit protocol, got {entry:?}")
    };
    assert_eq!(
        entry, 0x10_0200,
        "64-bit entry is 0x200 past the protected-mode kernel"
    );
    let mem = builder.memory();
    let read_u32 = |off: u64| {
        mem.read_obj::<u32>(GuestAddress(zero_page + off))
            .expect("zero page")
    };
    assert_eq!(
        read_u32(0x202),
        0x5372_6448,
        "setup header copied from the image ('HdrS')"
    );
    assert_eq!(
        read_u32(0x228),
        vmm::layout::CMDLINE_START as u32,
        "cmd_line_ptr"
    );
    let ramdisk_size = read_u32(0x21c);
    assert_eq!(
        u64::from(ramdisk_size),
        std::fs::metadata(&initrd).expect("initrd").len()
    );
    assert!(
        mem.read_obj::<u8>(GuestAddress(zero_page + 0x1e8))
            .expect("e820 entries")
            >= 2
    );
    // Let the decompressor run for a while: it must neither fault nor stop the VM.
    let vm = builder
        .start(BootEntry::Linux64 { entry, zero_page })
        .expect("start");
    let stop = vm.stop_handle().expect("stop");
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(15));
        let _ = stop.request_stop();
    });
    assert_eq!(
        vm.wait(),
        VmOutcome::Stopped,
        "the bzImage decompressor ran without a fault"
    );
}
