//! Tiny hand-assembled guests that drive virtio-mmio devices through real KVM exits,
//! ioeventfds and the VMM loop, with seccomp on: register reads, feature negotiation,
//! queue setup, DRIVER_OK, a notification, and the used ring filled by the VMM thread.

mod common;

use common::Console;
use std::time::Duration;
use vm_memory::{Bytes, GuestAddress};
use vmm::builder::{BuildOptions, MicrovmBuilder};
use vmm::devices::serial::ConsoleSink;
use vmm::memory::GuestMemoryMmap;
use vmm::resources::{CpuTemplate, DriveConfig};
use vmm::VmOutcome;

const CODE: u64 = 0x10_0000;
const DEVICE: u64 = 0xd000_1000;
const DESC: u64 = 0x20_0000;
const AVAIL: u64 = 0x20_1000;
const USED: u64 = 0x20_2000;
const BUF: u64 = 0x20_3000;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// Just enough x86-64 machine code. `rcx` holds the device base, `dx` the COM1 port.
#[derive(Default)]
struct Asm(Vec<u8>);

impl Asm {
    fn start() -> Self {
        let mut a = Asm::default();
        a.0.extend_from_slice(&[0x48, 0xb9]); // mov rcx, DEVICE
        a.0.extend_from_slice(&DEVICE.to_le_bytes());
        a.0.extend_from_slice(&[0x66, 0xba, 0xf8, 0x03]); // mov dx, 0x3f8
        a
    }
    /// mov eax, [rcx + off]
    fn read(&mut self, off: u32) -> &mut Self {
        self.0.extend_from_slice(&[0x8b, 0x81]);
        self.0.extend_from_slice(&off.to_le_bytes());
        self
    }
    /// mov dword [rcx + off], value
    fn write(&mut self, off: u32, value: u32) -> &mut Self {
        self.0.extend_from_slice(&[0xc7, 0x81]);
        self.0.extend_from_slice(&off.to_le_bytes());
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }
    /// add al, n; out dx, al
    fn print_al_plus(&mut self, n: u8) -> &mut Self {
        self.0.extend_from_slice(&[0x04, n, 0xee]);
        self
    }
    /// mov rax, addr; mov word [rax], value
    fn store16(&mut self, addr: u64, value: u16) -> &mut Self {
        self.0.extend_from_slice(&[0x48, 0xb8]);
        self.0.extend_from_slice(&addr.to_le_bytes());
        self.0.extend_from_slice(&[0x66, 0xc7, 0x00]);
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }
    /// mov rax, addr; spin: cmp word [rax], value; jne spin
    fn wait16(&mut self, addr: u64, value: u8) -> &mut Self {
        self.0.extend_from_slice(&[0x48, 0xb8]);
        self.0.extend_from_slice(&addr.to_le_bytes());
        self.0
            .extend_from_slice(&[0x66, 0x83, 0x38, value, 0x75, 0xfa]);
        self
    }
    /// Resets through the i8042, ending the VM.
    fn reset(&mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0xb0, 0xfe, 0xe6, 0x64, 0xf4]);
        std::mem::take(&mut self.0)
    }
}

/// Builds a VM with the devices `attach` adds, runs `code`, returns outcome, console and memory.
fn run(
    attach: impl FnOnce(&mut MicrovmBuilder),
    setup: impl FnOnce(&GuestMemoryMmap),
    code: &[u8],
) -> (VmOutcome, String, GuestMemoryMmap) {
    let mut b =
        MicrovmBuilder::new(64, 1, CpuTemplate::Auto, true, BuildOptions::default()).expect("VM");
    let console = Console::default();
    b.attach_serial(ConsoleSink::Writer(Box::new(console.clone())), false, false)
        .expect("serial");
    b.attach_i8042().expect("i8042");
    attach(&mut b);
    let mem = b.memory().clone();
    setup(&mem);
    let entry = b.load_raw_code(code, CODE).expect("code");
    let vm = b.start(entry).expect("start");
    let stop = vm.stop_handle().expect("stop");
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(30));
        let _ = stop.request_stop();
    });
    let outcome = vm.wait();
    drop(watchdog);
    let text = String::from_utf8_lossy(&console.0.lock().expect("console")).into_owned();
    (outcome, text, mem)
}

fn write_desc(mem: &GuestMemoryMmap, index: u64, addr: u64, len: u32, flags: u16, next: u16) {
    let at = DESC + 16 * index;
    mem.write_obj(addr, GuestAddress(at)).expect("desc");
    mem.write_obj(len, GuestAddress(at + 8)).expect("desc");
    mem.write_obj(flags, GuestAddress(at + 12)).expect("desc");
    mem.write_obj(next, GuestAddress(at + 14)).expect("desc");
}

/// Negotiates VERSION_1, sets up queue 0 (16 entries), sets DRIVER_OK, prints the status
/// as `'0' + status`, then makes `chains` available and notifies, waits for them to be used.
fn drive_queue(chains: u16) -> Vec<u8> {
    let mut a = Asm::start();
    a.write(0x70, 1)
        .write(0x70, 3)
        .write(0x24, 1)
        .write(0x20, 1)
        .write(0x70, 0xb);
    a.write(0x30, 0)
        .write(0x38, 16)
        .write(0x80, DESC as u32)
        .write(0x84, 0);
    a.write(0x90, AVAIL as u32)
        .write(0x94, 0)
        .write(0xa0, USED as u32)
        .write(0xa4, 0)
        .write(0x44, 1);
    a.write(0x70, 0xf).read(0x70).print_al_plus(b'0');
    a.store16(AVAIL + 2, chains)
        .write(0x50, 0)
        .wait16(USED + 2, chains as u8);
    a.0.extend_from_slice(&[0xb0, b'!', 0xee]);
    a.reset()
}

#[test]
fn guest_reads_the_identification_registers() {
    let mut a = Asm::start();
    a.read(0x00);
    for _ in 0..3 {
        a.0.extend_from_slice(&[0xee, 0xc1, 0xe8, 0x08]); // out dx, al; shr eax, 8
    }
    a.0.push(0xee);
    a.read(0x04)
        .print_al_plus(b'0')
        .read(0x08)
        .print_al_plus(b'0');
    let (outcome, console, _) = run(
        |b| {
            b.attach_entropy().expect("rng");
        },
        |_| {},
        &a.reset(),
    );
    assert_eq!(outcome, VmOutcome::Reboot);
    assert_eq!(console, "virt24");
}

#[test]
fn entropy_request_is_served_by_the_vmm_thread() {
    let setup = |mem: &GuestMemoryMmap| {
        write_desc(mem, 0, BUF, 64, F_WRITE, 0);
        mem.write_obj(0u16, GuestAddress(AVAIL + 4)).expect("ring");
    };
    let (outcome, console, mem) = run(
        |b| {
            b.attach_entropy().expect("rng");
        },
        setup,
        &drive_queue(1),
    );
    assert_eq!(outcome, VmOutcome::Reboot);
    assert_eq!(
        console, "?!",
        "status 0xf after DRIVER_OK, then the request was used"
    );
    let len: u32 = mem.read_obj(GuestAddress(USED + 8)).expect("used len");
    assert_eq!(len, 64);
    let mut buf = [0u8; 64];
    mem.read_slice(&mut buf, GuestAddress(BUF)).expect("buffer");
    assert_ne!(buf, [0u8; 64]);
}

#[test]
fn block_requests_are_served_by_the_vmm_thread() {
    let disk = tempfile::NamedTempFile::new().expect("disk");
    let image: Vec<u8> = (0..4 * 512).map(|i| (i / 512) as u8 + 1).collect();
    std::fs::write(disk.path(), &image).expect("image");
    let drive = DriveConfig {
        drive_id: "d".into(),
        path_on_host: disk.path().into(),
        is_root_device: true,
        is_read_only: false,
        rate_limiter: None,
        io_engine: Default::default(),
    };
    let header = |mem: &GuestMemoryMmap, at: u64, kind: u32, sector: u64| {
        mem.write_obj(kind, GuestAddress(at)).expect("hdr");
        mem.write_obj(sector, GuestAddress(at + 8)).expect("hdr");
    };
    let setup = |mem: &GuestMemoryMmap| {
        // IN sector 1; OUT sector 2; FLUSH.
        header(mem, BUF, 0, 1);
        header(mem, BUF + 0x100, 1, 2);
        header(mem, BUF + 0x200, 4, 0);
        mem.write_slice(&[0xab; 512], GuestAddress(BUF + 0x2000))
            .expect("data");
        for (i, (addr, len, flags)) in [
            (BUF, 16, F_NEXT),
            (BUF + 0x1000, 512, F_NEXT | F_WRITE),
            (BUF + 0x3000, 1, F_WRITE),
            (BUF + 0x100, 16, F_NEXT),
            (BUF + 0x2000, 512, F_NEXT),
            (BUF + 0x3001, 1, F_WRITE),
            (BUF + 0x200, 16, F_NEXT),
            (BUF + 0x3002, 1, F_WRITE),
        ]
        .into_iter()
        .enumerate()
        {
            write_desc(mem, i as u64, addr, len, flags, i as u16 + 1);
        }
        for (slot, head) in [0u16, 3, 6].into_iter().enumerate() {
            mem.write_obj(head, GuestAddress(AVAIL + 4 + 2 * slot as u64))
                .expect("ring");
        }
        mem.write_slice(&[0xff; 3], GuestAddress(BUF + 0x3000))
            .expect("status");
    };
    let (outcome, console, mem) = run(
        |b| {
            b.attach_drive(&drive).expect("drive");
        },
        setup,
        &drive_queue(3),
    );
    assert_eq!(outcome, VmOutcome::Reboot);
    assert_eq!(console, "?!");
    let mut status = [0xffu8; 3];
    mem.read_slice(&mut status, GuestAddress(BUF + 0x3000))
        .expect("status");
    assert_eq!(status, [0, 0, 0], "IN, OUT and FLUSH succeeded");
    let mut read = vec![0u8; 512];
    mem.read_slice(&mut read, GuestAddress(BUF + 0x1000))
        .expect("read");
    assert_eq!(read, vec![2u8; 512]);
    let used_len: u32 = mem.read_obj(GuestAddress(USED + 8)).expect("used");
    assert_eq!(used_len, 513);
    let after = std::fs::read(disk.path()).expect("image");
    assert_eq!(&after[1024..1536], &[0xab; 512][..]);
    assert_eq!(&after[..1024], &image[..1024]);
}
