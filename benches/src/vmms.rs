//! Command lines for the two VMMs under test, built so that both boot the same guest.

use std::path::PathBuf;
use std::process::Command;

/// What zvm appends to the kernel command line on KVM PVM hosts; QEMU gets it
/// explicitly so that both VMMs boot the same effective command line.
pub use vmm::arch::cpuid::PVM_KERNEL_ARGS;

/// Whether this host runs KVM's PVM flavour (module `kvm_pvm`).
pub fn is_pvm_host() -> bool {
    vmm::host::KvmFlavour::detect() == vmm::host::KvmFlavour::Pvm
}

/// Which VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vmm {
    /// This project's zvm.
    Zvm,
    /// QEMU with `-M microvm`.
    Qemu,
}

impl Vmm {
    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Vmm::Zvm => "zvm",
            Vmm::Qemu => "qemu",
        }
    }
}

/// The order of the two VMMs in run `run` (0-based): alternating, so that neither always
/// runs first (a cold page cache or a busy host then favours neither).
pub fn order(run: usize) -> [Vmm; 2] {
    if run & 1 == 0 {
        [Vmm::Zvm, Vmm::Qemu]
    } else {
        [Vmm::Qemu, Vmm::Zvm]
    }
}

/// The guest both VMMs boot.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    /// Kernel image (ELF with a PVH note).
    pub kernel: PathBuf,
    /// Initramfs, if any.
    pub initrd: Option<PathBuf>,
    /// Kernel command line as given to zvm (before zvm's own PVM additions).
    pub cmdline: String,
    /// vCPUs.
    pub cpus: u32,
    /// Guest memory in MiB.
    pub mem_mib: u64,
}

impl GuestSpec {
    /// Guest memory in bytes.
    pub fn mem_bytes(&self) -> u64 {
        self.mem_mib << 20
    }
}

/// How to start the VMMs.
#[derive(Debug, Clone)]
pub struct Launcher {
    /// The zvm binary.
    pub zvm: PathBuf,
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// Whether the host is a PVM host (QEMU then gets zvm's PVM command-line additions
    /// and a CPU model it can set up there).
    pub pvm: bool,
}

impl Launcher {
    /// The command that boots `guest` under `vmm`.
    pub fn command(&self, vmm: Vmm, guest: &GuestSpec) -> Command {
        let (program, args) = match vmm {
            Vmm::Zvm => (&self.zvm, zvm_args(guest)),
            Vmm::Qemu => (&self.qemu, qemu_args(guest, self.pvm)),
        };
        let mut cmd = Command::new(program);
        cmd.args(args);
        cmd
    }

    /// The QEMU `-cpu` model used on this host.
    pub fn qemu_cpu(&self) -> &'static str {
        qemu_cpu(self.pvm)
    }
}

/// `-cpu host` normally. On PVM hosts QEMU 7.2 aborts with `-cpu host` or `-cpu max`
/// ("failed to set MSR 0x10a", IA32_ARCH_CAPABILITIES), so that MSR's feature is turned off.
pub fn qemu_cpu(pvm: bool) -> &'static str {
    if pvm {
        "host,-arch-capabilities"
    } else {
        "host"
    }
}

/// zvm's arguments for `guest`, console on stdout.
pub fn zvm_args(guest: &GuestSpec) -> Vec<String> {
    let mut args = vec![
        "run".to_string(),
        "--kernel".into(),
        guest.kernel.display().to_string(),
    ];
    if let Some(initrd) = &guest.initrd {
        args.extend(["--initrd".to_string(), initrd.display().to_string()]);
    }
    args.extend([
        "--cmdline".to_string(),
        guest.cmdline.clone(),
        "--cpus".into(),
        guest.cpus.to_string(),
        "--memory".into(),
        format!("{}M", guest.mem_mib),
        "--console".into(),
        "stdio".into(),
    ]);
    args.extend(irqchip_args(std::env::var(IRQCHIP_ENV).ok().as_deref()));
    args
}

/// Environment variable choosing zvm's irqchip in every benchmark (`split` or `kernel`,
/// passed on as `zvm run --irqchip`; unset: zvm's default), to compare the two in one
/// host state.
pub const IRQCHIP_ENV: &str = "ZVM_BENCH_IRQCHIP";

/// `--irqchip KIND` for a `ZVM_BENCH_IRQCHIP` value (nothing when unset or empty).
fn irqchip_args(kind: Option<&str>) -> Vec<String> {
    match kind {
        Some(kind) if !kind.is_empty() => vec!["--irqchip".into(), kind.into()],
        _ => Vec::new(),
    }
}

/// QEMU's arguments for `guest`: `-M microvm`, KVM, serial console on stdout, no default
/// devices, no config files, exit instead of rebooting.
pub fn qemu_args(guest: &GuestSpec, pvm: bool) -> Vec<String> {
    let mut cmdline = guest.cmdline.clone();
    if pvm {
        cmdline = format!("{} {PVM_KERNEL_ARGS}", cmdline.trim());
    }
    let mut args: Vec<String> = [
        "-M",
        "microvm",
        "-enable-kvm",
        "-cpu",
        qemu_cpu(pvm),
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-serial",
        "stdio",
        "-no-reboot",
    ]
    .iter()
    .map(|s| (*s).to_string())
    .collect();
    args.extend([
        "-m".to_string(),
        guest.mem_mib.to_string(),
        "-smp".into(),
        guest.cpus.to_string(),
    ]);
    args.extend(["-kernel".to_string(), guest.kernel.display().to_string()]);
    if let Some(initrd) = &guest.initrd {
        args.extend(["-initrd".to_string(), initrd.display().to_string()]);
    }
    args.extend(["-append".to_string(), cmdline]);
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest() -> GuestSpec {
        GuestSpec {
            kernel: "/k/vmlinux".into(),
            initrd: Some("/i/init.cpio".into()),
            cmdline: "console=ttyS0 reboot=k panic=1".into(),
            cpus: 1,
            mem_mib: 256,
        }
    }

    fn value_after<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
    }

    #[test]
    fn qemu_gets_zvm_pvm_arguments_only_on_pvm_hosts() {
        let plain = qemu_args(&guest(), false);
        assert_eq!(
            value_after(&plain, "-append"),
            Some("console=ttyS0 reboot=k panic=1")
        );
        assert_eq!(value_after(&plain, "-cpu"), Some("host"));
        let pvm = qemu_args(&guest(), true);
        assert_eq!(
            value_after(&pvm, "-append"),
            Some(format!("console=ttyS0 reboot=k panic=1 {PVM_KERNEL_ARGS}").as_str())
        );
        assert_eq!(value_after(&pvm, "-cpu"), Some("host,-arch-capabilities"));
        assert_eq!(value_after(&pvm, "-m"), Some("256"));
        assert_eq!(value_after(&pvm, "-initrd"), Some("/i/init.cpio"));
    }

    #[test]
    fn runs_alternate_which_vmm_goes_first() {
        assert_eq!(order(0), [Vmm::Zvm, Vmm::Qemu]);
        assert_eq!(order(1), [Vmm::Qemu, Vmm::Zvm]);
        assert_eq!(order(2), order(0));
    }

    #[test]
    fn the_irqchip_is_passed_on_when_chosen() {
        assert!(irqchip_args(None).is_empty());
        assert!(irqchip_args(Some("")).is_empty());
        assert_eq!(irqchip_args(Some("kernel")), ["--irqchip", "kernel"]);
    }

    #[test]
    fn zvm_gets_the_plain_command_line() {
        let args = zvm_args(&guest());
        assert_eq!(
            value_after(&args, "--cmdline"),
            Some("console=ttyS0 reboot=k panic=1")
        );
        assert_eq!(value_after(&args, "--memory"), Some("256M"));
        assert_eq!(value_after(&args, "--console"), Some("stdio"));
    }
}
