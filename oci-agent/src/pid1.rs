//! Duties of the agent as the VM's PID 1: basic file systems, loopback and the further
//! interfaces' addresses ([`crate::netcfg`]), cgroup controllers,
//! Ctrl-Alt-Del as a signal, and powering off at the end.

use std::path::Path;

use crate::sys::{LinuxSys, Sys};

/// Makes sure descriptors 0, 1 and 2 are open (the console, or /dev/null), so pipes created
/// later never land on them.
pub fn ensure_stdio() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries the descriptor.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0 {
            continue;
        }
        for path in [c"/dev/console", c"/dev/null"] {
            // SAFETY: open with a valid C string; the descriptor is moved to `fd` if needed.
            let got = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
            if got >= 0 {
                if got != fd {
                    // SAFETY: dup2 and close of descriptors we own.
                    unsafe {
                        libc::dup2(got, fd);
                        libc::close(got);
                    }
                }
                break;
            }
        }
    }
}

fn mount(
    sys: &mut LinuxSys,
    source: &str,
    target: &str,
    fstype: &str,
    flags: u64,
    data: Option<&str>,
) {
    let t = Path::new(target);
    let _ = sys.mkdir_all(t);
    if let Err(e) = sys.mount(Some(Path::new(source)), t, Some(fstype), flags, data) {
        if e.raw_os_error() != Some(libc::EBUSY) {
            eprintln!("zvm-oci-agent: mount {fstype} on {target}: {e}");
        }
    }
}

/// Mounts /proc, /sys, /dev, /dev/pts, /dev/shm, /run and the cgroup v2 hierarchy, enables all
/// cgroup controllers for children, brings up `lo`, and turns Ctrl-Alt-Del into SIGINT.
pub fn boot() {
    let sys = &mut LinuxSys;
    let nosuid = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount(sys, "proc", "/proc", "proc", nosuid, None);
    mount(sys, "sysfs", "/sys", "sysfs", nosuid, None);
    mount(
        sys,
        "devtmpfs",
        "/dev",
        "devtmpfs",
        libc::MS_NOSUID,
        Some("mode=0755"),
    );
    ensure_stdio();
    mount(
        sys,
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("ptmxmode=0666,mode=0620"),
    );
    mount(sys, "tmpfs", "/dev/shm", "tmpfs", nosuid, Some("mode=1777"));
    mount(
        sys,
        "tmpfs",
        "/run",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=0755"),
    );
    mount(sys, "cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid, None);
    if let Ok(controllers) = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers") {
        let enable: Vec<String> = controllers
            .split_whitespace()
            .map(|c| format!("+{c}"))
            .collect();
        if !enable.is_empty() {
            if let Err(e) =
                std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", enable.join(" "))
            {
                eprintln!("zvm-oci-agent: enable cgroup controllers {enable:?}: {e}");
            }
        }
    }
    if let Err(e) = sys.loopback_up() {
        eprintln!("zvm-oci-agent: bring up lo: {e}");
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let (addresses, bad) = crate::netcfg::parse_cmdline(&cmdline);
    for message in bad {
        eprintln!("zvm-oci-agent: {message}");
    }
    for a in addresses {
        match crate::netcfg::apply(&a) {
            Ok(()) => eprintln!(
                "zvm-oci-agent: {} has {}/{}",
                a.interface, a.address, a.prefix
            ),
            Err(e) => eprintln!(
                "zvm-oci-agent: address {}/{} on {}: {e}",
                a.address, a.prefix, a.interface
            ),
        }
    }
    // SAFETY: reboot(2) with the CAD_OFF command only changes how Ctrl-Alt-Del is handled.
    unsafe { libc::reboot(libc::RB_DISABLE_CAD) };
}

/// Syncs and ends the VM. Never returns.
///
/// An ACPI power-off where the kernel found ACPI (zvm ends the VM as powered off); else a
/// reboot, since without ACPI a guest power-off only halts the CPUs, which leaves the VMM
/// running, while zvm ends the VM on a reboot (`reboot=k`, through the i8042).
pub fn power_off() -> ! {
    let acpi = std::path::Path::new("/sys/firmware/acpi").exists();
    // SAFETY: sync and reboot have no memory-safety preconditions; we are PID 1.
    unsafe {
        libc::sync();
        if acpi {
            libc::reboot(libc::RB_POWER_OFF);
        }
        libc::reboot(libc::RB_AUTOBOOT);
    }
    loop {
        // SAFETY: pause(2) just waits.
        unsafe { libc::pause() };
    }
}
