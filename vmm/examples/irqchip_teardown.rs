//! What a VM's interrupt controller costs when the VM goes away: builds a tiny VM (16 MiB,
//! one vCPU running `out 0x10, al` in real mode) with KVM's full in-kernel irqchip
//! (PIC + IOAPIC + local APICs) or a split one (`KVM_CAP_SPLIT_IRQCHIP`, 24 IOAPIC routes:
//! only the local APICs in KVM), runs it to its port write, then times closing the VM's
//! file descriptor (when KVM tears the VM down). Prints the medians of `ROUNDS` rounds.
//!
//!     cargo run --release -p vmm --example irqchip_teardown -- [ROUNDS]

use kvm_bindings::{kvm_enable_cap, kvm_userspace_memory_region, KVM_CAP_SPLIT_IRQCHIP};
use kvm_ioctls::{Kvm, VcpuExit};
use std::time::{Duration, Instant};

const MEM_SIZE: usize = 16 << 20;
const CODE_AT: u64 = 0x1000;

#[derive(Clone, Copy, Debug)]
enum Irqchip {
    Kernel,
    Split,
}

/// One VM: (time to build and run it, time to close its fd).
fn round(kvm: &Kvm, kind: Irqchip) -> Result<(Duration, Duration), Box<dyn std::error::Error>> {
    let start = Instant::now();
    let vm = kvm.create_vm()?;
    // SAFETY: an anonymous private mapping, unmapped below after the VM is gone.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            MEM_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if mem == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error().into());
    }
    // out 0x10, al
    let code = [0xe6u8, 0x10];
    // SAFETY: CODE_AT + 2 is inside the mapping.
    unsafe {
        std::ptr::copy_nonoverlapping(
            code.as_ptr(),
            (mem as *mut u8).add(CODE_AT as usize),
            code.len(),
        )
    };
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: mem as u64,
        flags: 0,
    };
    // SAFETY: the mapping outlives the VM (it is unmapped after the VM's fd is closed).
    unsafe { vm.set_user_memory_region(region)? };
    vm.set_tss_address(0xfffb_d000)?;
    match kind {
        Irqchip::Kernel => vm.create_irq_chip()?,
        Irqchip::Split => {
            let mut cap = kvm_enable_cap {
                cap: KVM_CAP_SPLIT_IRQCHIP,
                ..Default::default()
            };
            cap.args[0] = 24;
            vm.enable_cap(&cap)?;
        }
    }
    let mut vcpu = vm.create_vcpu(0)?;
    let mut sregs = vcpu.get_sregs()?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs)?;
    let mut regs = vcpu.get_regs()?;
    regs.rip = CODE_AT;
    regs.rflags = 2;
    vcpu.set_regs(&regs)?;
    match vcpu.run()? {
        VcpuExit::IoOut(0x10, _) => {}
        other => return Err(format!("unexpected exit {other:?}").into()),
    }
    let built = start.elapsed();
    drop(vcpu);
    let close = Instant::now();
    drop(vm);
    let closed = close.elapsed();
    // SAFETY: the VM that used the mapping is gone.
    unsafe { libc::munmap(mem, MEM_SIZE) };
    Ok((built, closed))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|r| r.parse())
        .transpose()?
        .unwrap_or(20);
    let kvm = Kvm::new()?;
    println!(
        "KVM_CAP_SPLIT_IRQCHIP reported: {}",
        kvm.check_extension_raw(u64::from(KVM_CAP_SPLIT_IRQCHIP))
    );
    for kind in [
        Irqchip::Kernel,
        Irqchip::Split,
        Irqchip::Kernel,
        Irqchip::Split,
    ] {
        let mut built = Vec::new();
        let mut closed = Vec::new();
        for _ in 0..rounds {
            let (b, c) = round(&kvm, kind)?;
            built.push(b);
            closed.push(c);
        }
        let (min, max) = (
            *closed.iter().min().unwrap_or(&Duration::ZERO),
            *closed.iter().max().unwrap_or(&Duration::ZERO),
        );
        println!(
            "{kind:?}: {rounds} VMs; build+run median {:?}; close median {:?} (min {min:?}, max {max:?})",
            median(built),
            median(closed)
        );
    }
    Ok(())
}
