//! Facts about the host: its memory and which flavour of KVM it runs.
//!
//! KVM's PVM flavour (module `kvm_pvm`) runs guests without VMX/SVM: guest kernel code is
//! emulated, some instructions stop the VM, and SYSCALL from guest user mode does not
//! enter guest kernel mode. zvm stays a normal KVM VMM there; it only picks the `pvm` CPU
//! template and tells the user that a stock guest kernel will not reach userspace.

use kvm_ioctls::{Cap, Kvm};
use std::path::Path;

/// The kind of KVM the host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmFlavour {
    /// Intel VMX (`kvm_intel`).
    Vmx,
    /// AMD SVM (`kvm_amd`).
    Svm,
    /// Pagetable-based virtual machine (`kvm_pvm`), no hardware virtualization.
    Pvm,
    /// /dev/kvm works but the module is not recognised.
    Unknown,
}

impl KvmFlavour {
    /// The flavour of the running kernel's KVM, from the modules in /sys/module.
    pub fn detect() -> Self {
        Self::detect_in(Path::new("/sys/module"))
    }

    /// Like [`KvmFlavour::detect`], reading module directories under `sys_module`.
    pub fn detect_in(sys_module: &Path) -> Self {
        if sys_module.join("kvm_pvm").exists() {
            KvmFlavour::Pvm
        } else if sys_module.join("kvm_intel").exists() {
            KvmFlavour::Vmx
        } else if sys_module.join("kvm_amd").exists() {
            KvmFlavour::Svm
        } else {
            KvmFlavour::Unknown
        }
    }

    /// A short human name.
    pub fn describe(self) -> &'static str {
        match self {
            KvmFlavour::Vmx => "Intel VMX (kvm_intel)",
            KvmFlavour::Svm => "AMD SVM (kvm_amd)",
            KvmFlavour::Pvm => "PVM, pagetable-based without VMX/SVM (kvm_pvm)",
            KvmFlavour::Unknown => "unknown",
        }
    }

    /// Whether a stock Linux guest kernel is expected to run its userspace.
    pub fn stock_guest_userspace_works(self) -> bool {
        self != KvmFlavour::Pvm
    }
}

/// Total host RAM in MiB, if it can be read.
pub fn host_memory_mib() -> Option<u64> {
    // SAFETY: sysinfo fills the zero-initialised struct we own.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable sysinfo struct.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return None;
    }
    Some((info.totalram as u64).saturating_mul(info.mem_unit as u64) >> 20)
}

/// What `zvm doctor` reports.
#[derive(Debug, Clone)]
pub struct HostReport {
    /// Flavour of KVM.
    pub flavour: KvmFlavour,
    /// KVM API version, or why /dev/kvm could not be opened.
    pub api_version: Result<i32, String>,
    /// Capabilities zvm relies on, and whether the host has them.
    pub capabilities: Vec<(&'static str, bool)>,
    /// Recommended and maximum vCPUs per VM.
    pub vcpus: Option<(usize, usize)>,
    /// Host RAM in MiB.
    pub memory_mib: Option<u64>,
}

/// The capabilities zvm uses.
const CAPS: &[(&str, Cap)] = &[
    ("KVM_CAP_IRQCHIP", Cap::Irqchip),
    ("KVM_CAP_PIT2", Cap::Pit2),
    ("KVM_CAP_IRQFD", Cap::Irqfd),
    ("KVM_CAP_IOEVENTFD", Cap::Ioeventfd),
    ("KVM_CAP_USER_MEMORY", Cap::UserMemory),
    ("KVM_CAP_SET_TSS_ADDR", Cap::SetTssAddr),
    ("KVM_CAP_EXT_CPUID", Cap::ExtCpuid),
    ("KVM_CAP_MP_STATE", Cap::MpState),
    ("KVM_CAP_IMMEDIATE_EXIT", Cap::ImmediateExit),
];

impl HostReport {
    /// Probes /dev/kvm and the loaded modules.
    pub fn probe() -> Self {
        let flavour = KvmFlavour::detect();
        let memory_mib = host_memory_mib();
        match Kvm::new() {
            Ok(kvm) => HostReport {
                flavour,
                api_version: Ok(kvm.get_api_version()),
                capabilities: CAPS
                    .iter()
                    .map(|(n, c)| (*n, kvm.check_extension(*c)))
                    .collect(),
                vcpus: Some((kvm.get_nr_vcpus(), kvm.get_max_vcpus())),
                memory_mib,
            },
            Err(e) => HostReport {
                flavour,
                api_version: Err(format!("cannot open /dev/kvm: {e}")),
                capabilities: Vec::new(),
                vcpus: None,
                memory_mib,
            },
        }
    }

    /// The report as text, one fact a line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |k: &str, v: String| out.push_str(&format!("{k:<28}{v}\n"));
        match &self.api_version {
            Ok(v) => line("kvm", format!("/dev/kvm usable, API version {v}")),
            Err(e) => line("kvm", e.clone()),
        }
        line("kvm flavour", self.flavour.describe().to_string());
        if let Some((rec, max)) = self.vcpus {
            line("vcpus per VM", format!("{rec} recommended, {max} max"));
        }
        if let Some(mib) = self.memory_mib {
            line("host memory", format!("{mib} MiB"));
        }
        for (name, present) in &self.capabilities {
            line(name, if *present { "yes" } else { "NO" }.to_string());
        }
        let userspace = if self.flavour.stock_guest_userspace_works() {
            "yes".to_string()
        } else {
            "no: SYSCALL from guest user mode does not enter guest kernel mode under PVM; \
             use zvm's test kernel (`zvm kernel path`), which carries a workaround"
                .to_string()
        };
        line("stock guest userspace", userspace);
        let template = if self.flavour == KvmFlavour::Pvm {
            "pvm"
        } else {
            "none"
        };
        line("default cpu template", template.to_string());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavour_comes_from_the_loaded_module() {
        let dir = tempfile::tempdir().expect("dir");
        assert_eq!(KvmFlavour::detect_in(dir.path()), KvmFlavour::Unknown);
        std::fs::create_dir(dir.path().join("kvm_amd")).expect("mkdir");
        assert_eq!(KvmFlavour::detect_in(dir.path()), KvmFlavour::Svm);
        std::fs::create_dir(dir.path().join("kvm_pvm")).expect("mkdir");
        assert_eq!(KvmFlavour::detect_in(dir.path()), KvmFlavour::Pvm);
        assert!(!KvmFlavour::Pvm.stock_guest_userspace_works());
        assert!(KvmFlavour::Vmx.stock_guest_userspace_works());
    }

    #[test]
    fn host_memory_is_known() {
        assert!(host_memory_mib().expect("sysinfo") > 0);
    }
}
