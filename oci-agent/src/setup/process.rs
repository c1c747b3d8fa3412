//! Process settings: limits, umask, capabilities, user, cwd, executable lookup.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{step, SetupError};
use crate::plan::caps::LAST_CAP;
use crate::plan::ProcessPlan;
use crate::sys::Sys;

/// Default umask when the spec gives none (runc's).
const DEFAULT_UMASK: u32 = 0o022;

/// Finds `args[0]`: used as a path when it contains a `/` (relative to the cwd), else searched
/// in `path_var` (PATH). Returns the path to exec.
pub fn find_executable<S: Sys>(
    sys: &mut S,
    name: &str,
    path_var: &str,
) -> Result<PathBuf, SetupError> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return if sys.is_executable(&p) {
            Ok(p)
        } else {
            Err(SetupError::NotFound {
                name: name.into(),
                where_: " (or not an executable file)".into(),
            })
        };
    }
    for dir in path_var.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(name);
        if sys.is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(SetupError::NotFound {
        name: name.into(),
        where_: format!(" in $PATH ({path_var})"),
    })
}

/// Installs the process's seccomp filters, in order.
fn install_seccomp<S: Sys>(sys: &mut S, p: &ProcessPlan) -> Result<(), SetupError> {
    let Some(seccomp) = &p.seccomp else {
        return Ok(());
    };
    for (i, program) in seccomp.programs.iter().enumerate() {
        step(sys.seccomp_filter(program, seccomp.flags), || {
            format!("install seccomp filter {i}")
        })?;
    }
    Ok(())
}

/// Applies the process settings (in the container's root, as root) and returns the executable
/// path to pass to execve. Order: rlimits (may raise hard limits while privileged), umask,
/// bounding-set drops (need CAP_SETPCAP), user and groups with capabilities kept, the final
/// capability sets and ambient raises, no_new_privs, cwd (checked as the user), lookup.
/// Seccomp filters go in before the user changes (as root) without no_new_privs, right after
/// it with.
pub fn apply_process<S: Sys>(sys: &mut S, p: &ProcessPlan) -> Result<CString, SetupError> {
    for r in &p.rlimits {
        step(sys.setrlimit(r.resource, r.soft, r.hard), || {
            format!("setrlimit {} {}/{}", r.resource, r.soft, r.hard)
        })?;
    }
    sys.umask(p.umask.unwrap_or(DEFAULT_UMASK));
    if let Some(caps) = &p.caps {
        for cap in 0..=LAST_CAP {
            if caps.bounding & (1 << cap) == 0 {
                match sys.cap_drop_bound(cap) {
                    // A capability newer than the running kernel.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                    r => step(r, || format!("drop capability {cap} from the bounding set"))?,
                }
            }
        }
        step(sys.set_keep_caps(true), || "keep capabilities".into())?;
    }
    // Without no_new_privs, installing a filter takes CAP_SYS_ADMIN: while still root.
    if !p.no_new_privileges {
        install_seccomp(sys, p)?;
    }
    step(sys.setgroups(&p.additional_gids), || {
        format!("setgroups {:?}", p.additional_gids)
    })?;
    step(sys.setresgid(p.gid), || format!("setgid {}", p.gid))?;
    step(sys.setresuid(p.uid), || format!("setuid {}", p.uid))?;
    if let Some(caps) = &p.caps {
        step(sys.set_keep_caps(false), || {
            "clear keep-capabilities".into()
        })?;
        step(
            sys.capset(caps.effective, caps.permitted, caps.inheritable),
            || {
                format!(
                    "capset effective {:#x} permitted {:#x} inheritable {:#x}",
                    caps.effective, caps.permitted, caps.inheritable
                )
            },
        )?;
        for cap in 0..=LAST_CAP {
            if caps.ambient & (1 << cap) != 0 {
                // As runc: an ambient capability the process may not hold (it must be in
                // both the permitted and inheritable sets, which runc's default spec does
                // not give a non-root user) is left out rather than failing the container.
                let _ = sys.cap_ambient_raise(cap);
            }
        }
    }
    if p.no_new_privileges {
        step(sys.set_no_new_privs(), || "set no_new_privs".into())?;
        // As late as possible: the filters also judge the setup's own system calls.
        install_seccomp(sys, p)?;
    }
    sys.chdir(&p.cwd).map_err(|source| SetupError::Cwd {
        path: p.cwd.clone(),
        source,
    })?;
    let name = p
        .args
        .first()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    let exe = find_executable(sys, &name, &p.path)?;
    CString::new(exe.as_os_str().as_bytes()).map_err(|_| SetupError::NotFound {
        name,
        where_: String::new(),
    })
}
