//! PID 1 of zvm's test and demo initramfs.
//!
//! Mounts the basic file systems, reports that userspace was reached (console marker and
//! the boot-timer device), optionally runs a system-call self-check or a shell, then
//! reboots, which ends the VM under zvm (exit code 0).
//!
//! Kernel command line switches: `zvm.mode=marker|syscalls|shell|script|wait`; `script`
//! runs `/bin/sh /zvm-test.sh` (a busybox initramfs); `wait` sleeps until Ctrl-Alt-Del or
//! the power button. `zvm.end=poweroff` ends the VM with an ACPI power-off instead of a
//! reboot (both end it under zvm with exit code 0).
//!
//! The ACPI power button (the VMM's `SendPowerButton`): the kernel's tiny power button
//! driver sends init SIGRTMIN+4 (as for systemd); init prints a marker, syncs and powers
//! off.
//!
//! Ctrl-Alt-Del (the VMM's `SendCtrlAltDel`, through the i8042 keyboard): init turns the
//! kernel's own Ctrl-Alt-Del reboot off (`reboot(LINUX_REBOOT_CMD_CAD_OFF)`), so the
//! kernel sends it SIGINT instead; init then prints a marker, syncs and reboots, which
//! ends the VM under zvm (exit code 0).

mod syscalls;

use std::ffi::CString;
use std::io::Write;

/// Guest physical address of zvm's boot-timer device.
const BOOT_TIMER_ADDR: libc::off_t = 0xd000_0000;
/// The byte that tells the boot timer "userspace reached".
const BOOT_TIMER_MAGIC: u8 = 123;

fn say(msg: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "zvm-guest: {msg}");
    let _ = out.flush();
}

fn mount(source: &str, target: &str, fstype: &str) {
    let _ = std::fs::create_dir_all(target);
    let (Ok(s), Ok(t), Ok(f)) = (CString::new(source), CString::new(target), CString::new(fstype)) else {
        return;
    };
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        say(&format!("mount {fstype} on {target} failed: {}", std::io::Error::last_os_error()));
    }
}

/// Writes the magic byte to the boot-timer device through /dev/mem.
fn signal_boot_timer() -> Result<(), String> {
    let path = c"/dev/mem";
    // SAFETY: plain open/mmap/munmap/close on our own descriptors and mapping.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDWR | libc::O_SYNC);
        if fd < 0 {
            return Err(format!("open /dev/mem: {}", std::io::Error::last_os_error()));
        }
        let page = libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, BOOT_TIMER_ADDR);
        libc::close(fd);
        if page == libc::MAP_FAILED {
            return Err(format!("mmap boot timer: {}", std::io::Error::last_os_error()));
        }
        std::ptr::write_volatile(page as *mut u8, BOOT_TIMER_MAGIC);
        libc::munmap(page, 4096);
    }
    Ok(())
}

/// The SIGINT handler: Ctrl-Alt-Del was pressed. Only async-signal-safe calls.
extern "C" fn on_ctrl_alt_del(_: libc::c_int) {
    const MSG: &[u8] = b"zvm-guest: ctrl-alt-del, shutting down\n";
    // SAFETY: write, sync and reboot are async-signal-safe system calls on our own data.
    unsafe {
        libc::write(libc::STDOUT_FILENO, MSG.as_ptr().cast(), MSG.len());
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
}

/// The SIGRTMIN+4 handler: the ACPI power button was pressed. Only async-signal-safe calls.
extern "C" fn on_power_button(_: libc::c_int) {
    const MSG: &[u8] = b"zvm-guest: power button, powering off\n";
    // SAFETY: write, sync and reboot are async-signal-safe system calls on our own data.
    unsafe {
        libc::write(libc::STDOUT_FILENO, MSG.as_ptr().cast(), MSG.len());
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
}

/// Powers off when the ACPI power button is pressed (SIGRTMIN+4 from the kernel).
fn take_over_power_button() {
    // SAFETY: installing a handler that only makes async-signal-safe calls.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_power_button as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGRTMIN() + 4, &action, std::ptr::null_mut()) != 0 {
            say(&format!("cannot handle the power button: {}", std::io::Error::last_os_error()));
        }
    }
}

/// Makes Ctrl-Alt-Del reach init as SIGINT, and shut the VM down cleanly then.
fn take_over_ctrl_alt_del() {
    // SAFETY: installing a handler that only makes async-signal-safe calls; reboot with
    // RB_DISABLE_CAD only changes what the kernel does on Ctrl-Alt-Del.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_ctrl_alt_del as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGINT, &action, std::ptr::null_mut()) != 0 {
            say(&format!("cannot handle SIGINT: {}", std::io::Error::last_os_error()));
        }
        if libc::reboot(libc::RB_DISABLE_CAD) != 0 {
            say(&format!("cannot take over ctrl-alt-del: {}", std::io::Error::last_os_error()));
        }
    }
}

/// Sleeps (one system call at a time) until a signal handler ends the VM.
fn wait_for_ctrl_alt_del() -> ! {
    say("waiting for ctrl-alt-del or the power button");
    loop {
        // SAFETY: pause has no preconditions.
        unsafe { libc::pause() };
    }
}

/// The value of `zvm.NAME=` on the kernel command line, or `default`.
fn cmdline_switch(name: &str, default: &str) -> String {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let prefix = format!("zvm.{name}=");
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(prefix.as_str()))
        .unwrap_or(default)
        .to_string()
}

fn cpus_online() -> i64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }
}

/// Ends the VM: an ACPI power-off with `poweroff`, else a reboot.
fn end_vm(poweroff: bool) -> ! {
    let how = if poweroff { libc::RB_POWER_OFF } else { libc::RB_AUTOBOOT };
    // SAFETY: sync and reboot have no memory-safety preconditions; we are PID 1.
    unsafe {
        libc::sync();
        libc::reboot(how);
    }
    say("reboot failed");
    loop {
        std::thread::park();
    }
}

/// Runs `/bin/sh /zvm-test.sh` and returns its exit status.
fn run_script() -> Result<i32, String> {
    let status = std::process::Command::new("/bin/sh")
        .arg("/zvm-test.sh")
        .env("PATH", "/bin:/sbin:/usr/bin:/usr/sbin")
        .status()
        .map_err(|e| e.to_string())?;
    Ok(status.code().unwrap_or(-1))
}

fn main() {
    take_over_ctrl_alt_del();
    take_over_power_button();
    mount("proc", "/proc", "proc");
    mount("sysfs", "/sys", "sysfs");
    mount("devtmpfs", "/dev", "devtmpfs");
    mount("tmpfs", "/tmp", "tmpfs");
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    say(&format!("userspace reached: init is pid {pid}, {} cpus online", cpus_online()));
    match signal_boot_timer() {
        Ok(()) => say("boot timer written"),
        Err(e) => say(&format!("boot timer not written: {e}")),
    }
    let mode = cmdline_switch("mode", "marker");
    match mode.as_str() {
        "syscalls" => match syscalls::run_check() {
            Ok(n) => say(&format!("syscall check passed: {n} system calls")),
            Err(e) => say(&format!("syscall check FAILED: {e}")),
        },
        "shell" => {
            let sh = c"/bin/sh";
            let argv = [sh.as_ptr(), std::ptr::null()];
            // SAFETY: argv is NUL-terminated and outlives the call.
            unsafe { libc::execv(sh.as_ptr(), argv.as_ptr()) };
            say(&format!("cannot run /bin/sh: {}", std::io::Error::last_os_error()));
        }
        "script" => match run_script() {
            Ok(code) => say(&format!("script exited with {code}")),
            Err(e) => say(&format!("script could not run: {e}")),
        },
        "wait" => wait_for_ctrl_alt_del(),
        _ => {}
    }
    let poweroff = cmdline_switch("end", "reboot") == "poweroff";
    say(if poweroff { "powering off" } else { "rebooting" });
    end_vm(poweroff);
}
