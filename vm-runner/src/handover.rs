//! What zvm hands the lean VMM executable (`zvm-vmm`) across `exec`: the VM's resources
//! and the run's options (`zvm run`), or API mode's options (`zvm --api-sock`,
//! `--config-file`), as JSON in a memfd the new image inherits (the only
//! descriptor made inheritable on purpose; Rust opens everything else close-on-exec).
//! The fd's number is `zvm-vmm`'s only argument: `zvm-vmm --handover-fd N`.
//!
//! `zvm-vmm` reads it as hostile input: bounded in size, strictly typed (unknown fields
//! are refused), the resources validated as `zvm run` validates them, every problem one
//! clear line and exit code 2.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;
use vmm::VmResources;

/// The flag that names the hand-over's fd.
pub const FD_FLAG: &str = "--handover-fd";
/// The largest hand-over read (a VM's resources are a few KiB).
pub const MAX_BYTES: u64 = 1 << 20;
/// The log levels the lean executable's logger knows (zvm's `--log-level` takes any
/// tracing filter; the others keep the VM in zvm itself).
pub const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Why a hand-over could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// The arguments are not `--handover-fd N`.
    #[error("usage: zvm-vmm --handover-fd N (zvm starts it; it is not run by hand)")]
    Usage,
    /// The fd is not an open file.
    #[error("hand-over fd {fd}: {source}")]
    Fd {
        /// The fd.
        fd: i32,
        /// Cause.
        source: std::io::Error,
    },
    /// Larger than [`MAX_BYTES`].
    #[error("the hand-over is larger than {MAX_BYTES} bytes")]
    TooLarge,
    /// Not the JSON of a [`Handover`], or its resources are invalid.
    #[error("invalid hand-over: {0}")]
    Invalid(String),
    /// The memfd could not be made or written.
    #[error("cannot write the hand-over: {0}")]
    Write(std::io::Error),
}

/// The VM to run: booted, restored from a snapshot, or configured through the API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Job {
    /// A VM booted from these resources, as `zvm run` built and validated them.
    Boot(VmResources),
    /// `zvm run --restore`.
    Restore(RestoreJob),
    /// API mode: `zvm --api-sock PATH` and/or `--config-file FILE`.
    Api(ApiJob),
}

/// API mode's options ([`crate::api::VmmModeArgs`] but the log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiJob {
    /// `--api-sock`.
    pub api_sock: Option<PathBuf>,
    /// `--config-file`.
    pub config_file: Option<PathBuf>,
    /// `--id`.
    pub id: String,
    /// `--seccomp-level on`.
    pub seccomp: bool,
}

/// The longest instance id a hand-over carries (zvm's `--id`).
pub const MAX_ID_BYTES: usize = 4096;

impl ApiJob {
    /// Checks what zvm's command line guarantees: a socket or a file, non-empty paths,
    /// a bounded id.
    fn validate(&self) -> Result<(), HandoverError> {
        let invalid = |what: &str| Err(HandoverError::Invalid(what.to_string()));
        if self.api_sock.is_none() && self.config_file.is_none() {
            return invalid("API mode needs an API socket or a config file");
        }
        let paths = self.api_sock.iter().chain(&self.config_file);
        if paths.into_iter().any(|p| p.as_os_str().is_empty()) {
            return invalid("an empty path");
        }
        if self.id.len() > MAX_ID_BYTES {
            return invalid("the instance id is too long");
        }
        Ok(())
    }

    /// The monitor's options, with `logging` as the process's log.
    pub fn mode_args(&self, logging: Box<dyn crate::api::LogControl>) -> crate::api::VmmModeArgs {
        crate::api::VmmModeArgs {
            api_sock: self.api_sock.clone(),
            config_file: self.config_file.clone(),
            id: self.id.clone(),
            seccomp: self.seccomp,
            logging,
        }
    }
}

/// `zvm run --restore`'s parameters (a snapshot without virtio-fs shares: those need
/// virtiofsd started beside the VM, which zvm does).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreJob {
    /// The state file.
    pub snapshot_path: PathBuf,
    /// The memory file.
    pub mem_file_path: PathBuf,
    /// `--drive-override ID=PATH`.
    pub drives: Vec<(String, PathBuf)>,
    /// `--net-override IFACE=TAP`.
    pub net: Vec<(String, String)>,
    /// `--vsock-override`.
    pub vsock_uds_path: Option<PathBuf>,
    /// `--track-dirty-pages`.
    pub track_dirty_pages: bool,
    /// `--seccomp on`.
    pub seccomp: bool,
    /// `--console`: stdio, off or file:PATH.
    pub console: String,
    /// `--verbose`.
    pub verbose: bool,
}

impl RestoreJob {
    /// The vmm crate's parameters (resumed at once, as `zvm run --restore` does).
    pub fn params(&self) -> vmm::snapshot::RestoreParams {
        vmm::snapshot::RestoreParams {
            snapshot_path: self.snapshot_path.clone(),
            mem_file_path: self.mem_file_path.clone(),
            overrides: vmm::snapshot::RestoreOverrides {
                drives: self.drives.clone(),
                net: self.net.clone(),
                vsock_uds_path: self.vsock_uds_path.clone(),
                fs: Vec::new(),
            },
            resume: true,
            track_dirty_pages: self.track_dirty_pages,
            seccomp: self.seccomp,
        }
    }
}

/// The VM and how to run it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handover {
    /// The VM.
    pub job: Job,
    /// `--metrics FILE`.
    pub metrics: Option<PathBuf>,
    /// `--shutdown-timeout`, in seconds.
    pub shutdown_timeout_secs: u64,
    /// zvm's log level (one of [`LOG_LEVELS`]).
    pub log_level: String,
    /// How long before the hand-over zvm's process started (boot times and console
    /// timestamps count from there), in nanoseconds.
    pub started_ns_ago: u64,
    /// In a jail's jailed half: the jail, locked down by zvm-vmm once the VM's devices
    /// are open (`zvm run --jail on`).
    #[serde(default)]
    pub jail: Option<jail::JailedHandover>,
}

impl Handover {
    /// Checks what JSON alone cannot: the resources as `zvm run` checks them (a restore's
    /// snapshot is checked when it is read), the console, the level.
    fn validate(&self) -> Result<(), HandoverError> {
        match &self.job {
            Job::Boot(resources) => resources
                .validate()
                .map_err(|e| HandoverError::Invalid(e.to_string()))?,
            // The restore reads and checks the snapshot itself, as for zvm run.
            Job::Restore(restore) => {
                restore
                    .console
                    .parse::<vmm::resources::ConsoleConfig>()
                    .map_err(|e| HandoverError::Invalid(e.to_string()))?;
            }
            Job::Api(api) => api.validate()?,
        }
        if !LOG_LEVELS.contains(&self.log_level.as_str()) {
            return Err(HandoverError::Invalid(format!(
                "log level {:?} is not one of {LOG_LEVELS:?}",
                self.log_level
            )));
        }
        Ok(())
    }

    /// The shutdown grace period.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }

    /// Writes the hand-over into a new memfd that survives `exec` (no close-on-exec).
    pub fn to_memfd(&self) -> Result<OwnedFd, HandoverError> {
        let json = serde_json::to_vec(self).map_err(|e| HandoverError::Invalid(e.to_string()))?;
        // SAFETY: memfd_create with a NUL-terminated name; the result is checked.
        let fd = unsafe { libc::memfd_create(c"zvm-handover".as_ptr(), 0) };
        if fd < 0 {
            return Err(HandoverError::Write(std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a new descriptor nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut file = File::from(owned);
        file.write_all(&json).map_err(HandoverError::Write)?;
        file.rewind().map_err(HandoverError::Write)?;
        Ok(file.into())
    }

    /// Reads the hand-over named by `zvm-vmm`'s arguments (after the program name) and
    /// closes its fd.
    pub fn from_args(
        mut args: impl Iterator<Item = std::ffi::OsString>,
    ) -> Result<Self, HandoverError> {
        let (Some(flag), Some(fd), None) = (args.next(), args.next(), args.next()) else {
            return Err(HandoverError::Usage);
        };
        if flag != FD_FLAG {
            return Err(HandoverError::Usage);
        }
        let fd: i32 = fd
            .to_str()
            .and_then(|s| s.parse().ok())
            .filter(|fd| *fd > 2)
            .ok_or(HandoverError::Usage)?;
        Self::read_fd(fd)
    }

    /// Reads the hand-over from `fd` (which this takes over and closes).
    fn read_fd(fd: i32) -> Result<Self, HandoverError> {
        let fd_err = |source| HandoverError::Fd { fd, source };
        // SAFETY: F_GETFD only asks whether fd is open; nothing is changed.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(fd_err(std::io::Error::last_os_error()));
        }
        // SAFETY: fd is open (checked above) and was handed to this process to own; no
        // other code of this process uses it.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        if !file.metadata().map_err(fd_err)?.is_file() {
            return Err(fd_err(std::io::Error::other("not a regular file or memfd")));
        }
        let mut bytes = Vec::new();
        file.take(MAX_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(fd_err)?;
        if bytes.len() as u64 > MAX_BYTES {
            return Err(HandoverError::TooLarge);
        }
        let handover: Handover =
            serde_json::from_slice(&bytes).map_err(|e| HandoverError::Invalid(e.to_string()))?;
        handover.validate()?;
        Ok(handover)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::IntoRawFd;

    fn sample() -> Handover {
        Handover {
            // Any readable file passes as the kernel until the VM is built.
            job: Job::Boot(VmResources::new(
                std::env::current_exe().expect("test binary"),
            )),
            metrics: Some("/tmp/m".into()),
            shutdown_timeout_secs: 3,
            log_level: "info".into(),
            started_ns_ago: 1_500_000,
            jail: None,
        }
    }

    fn args(fd: &str) -> std::vec::IntoIter<std::ffi::OsString> {
        vec![FD_FLAG.into(), fd.into()].into_iter()
    }

    /// A memfd holding `bytes`, its number given away.
    fn fd_with(bytes: &[u8]) -> String {
        // SAFETY: a new memfd, owned right away.
        let fd = unsafe { libc::memfd_create(c"t".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: as above.
        let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        file.write_all(bytes).expect("write");
        file.rewind().expect("rewind");
        OwnedFd::from(file).into_raw_fd().to_string()
    }

    #[test]
    fn a_handover_crosses_a_memfd() {
        let fd = sample().to_memfd().expect("memfd");
        let got = Handover::from_args(args(&fd.into_raw_fd().to_string())).expect("read");
        let (Job::Boot(got_vm), Job::Boot(vm)) = (&got.job, &sample().job) else {
            panic!("a boot: {got:?}");
        };
        assert_eq!(got_vm, vm);
        assert_eq!(got.metrics, sample().metrics);
        assert_eq!(got.shutdown_timeout(), Duration::from_secs(3));
        assert_eq!(got.started_ns_ago, 1_500_000);
    }

    #[test]
    fn hostile_handovers_are_refused_with_one_line() {
        let refused = |fd: String| {
            Handover::from_args(args(&fd))
                .expect_err("refused")
                .to_string()
        };
        assert!(refused(fd_with(b"{")).starts_with("invalid hand-over"));
        assert!(refused(fd_with(b"[]")).starts_with("invalid hand-over"));
        let mut json = serde_json::to_value(sample()).expect("json");
        json["extra"] = 1.into();
        let text = refused(fd_with(json.to_string().as_bytes()));
        assert!(text.contains("unknown field"), "{text}");
        let mut json = serde_json::to_value(sample()).expect("json");
        json["log_level"] = "vmm=debug".into();
        assert!(refused(fd_with(json.to_string().as_bytes())).contains("log level"));
        let mut bad = sample();
        if let Job::Boot(vm) = &mut bad.job {
            vm.machine_config.vcpu_count = 0;
        }
        let text = refused(fd_with(&serde_json::to_vec(&bad).expect("json")));
        assert!(text.starts_with("invalid hand-over"), "{text}");
        let big = vec![b' '; (MAX_BYTES + 1) as usize];
        assert!(refused(fd_with(&big)).contains("larger than"));
        // Not open; not a number; stdin; a directory.
        assert!(refused("987654".into()).starts_with("hand-over fd 987654"));
        for fd in ["x", "-3", "0"] {
            assert!(refused(fd.into()).starts_with("usage"));
        }
        let dir = File::open("/").expect("root dir");
        let text = refused(OwnedFd::from(dir).into_raw_fd().to_string());
        assert!(text.contains("not a regular file"), "{text}");
        assert!(Handover::from_args(std::iter::empty()).is_err());
    }

    #[test]
    fn a_restore_crosses_too_and_its_console_is_checked() {
        let restore = RestoreJob {
            snapshot_path: "/s".into(),
            mem_file_path: "/m".into(),
            drives: vec![("root".into(), "/d".into())],
            net: vec![("eth0".into(), "tap1".into())],
            vsock_uds_path: Some("/v".into()),
            track_dirty_pages: true,
            seccomp: true,
            console: "off".into(),
            verbose: false,
        };
        let handover = Handover {
            job: Job::Restore(restore.clone()),
            ..sample()
        };
        let fd = handover.to_memfd().expect("memfd");
        let got = Handover::from_args(args(&fd.into_raw_fd().to_string())).expect("read");
        let Job::Restore(got) = got.job else {
            panic!("a restore");
        };
        assert_eq!(got, restore);
        let params = got.params();
        assert!(params.resume && params.overrides.fs.is_empty());
        assert_eq!(params.overrides.net, restore.net);
        let bad = Handover {
            job: Job::Restore(RestoreJob {
                console: "tty".into(),
                ..restore
            }),
            ..sample()
        };
        let fd = bad.to_memfd().expect("memfd");
        let err = Handover::from_args(args(&fd.into_raw_fd().to_string())).expect_err("bad");
        assert!(err.to_string().starts_with("invalid hand-over"), "{err}");
    }

    #[test]
    fn api_mode_crosses_and_hostile_api_jobs_are_refused() {
        let job = ApiJob {
            api_sock: Some("/run/a.sock".into()),
            config_file: None,
            id: "vm-1".into(),
            seccomp: true,
        };
        let handover = Handover {
            job: Job::Api(job.clone()),
            metrics: None,
            ..sample()
        };
        let fd = handover.to_memfd().expect("memfd");
        let got = Handover::from_args(args(&fd.into_raw_fd().to_string())).expect("read");
        let Job::Api(got) = got.job else {
            panic!("API mode");
        };
        assert_eq!(got, job);
        let args_of = got.mode_args(Box::new(crate::lean_log::LineLogControl::detached()));
        assert_eq!(args_of.api_sock, job.api_sock);
        assert!(args_of.seccomp && args_of.config_file.is_none());

        let refused = |job: ApiJob| {
            let bad = Handover {
                job: Job::Api(job),
                ..sample()
            };
            let fd = bad.to_memfd().expect("memfd");
            Handover::from_args(args(&fd.into_raw_fd().to_string()))
                .expect_err("refused")
                .to_string()
        };
        let neither = refused(ApiJob {
            api_sock: None,
            ..job.clone()
        });
        assert!(neither.contains("API socket or a config file"), "{neither}");
        let empty = refused(ApiJob {
            config_file: Some("".into()),
            ..job.clone()
        });
        assert!(empty.contains("empty path"), "{empty}");
        let long = refused(ApiJob {
            id: "x".repeat(MAX_ID_BYTES + 1),
            ..job.clone()
        });
        assert!(long.contains("id is too long"), "{long}");
        // Unknown fields inside the job are refused too.
        let mut json = serde_json::to_value(&handover).expect("json");
        json["job"]["api"]["jailer"] = true.into();
        let text = Handover::from_args(args(&fd_with(json.to_string().as_bytes())))
            .expect_err("unknown field")
            .to_string();
        assert!(text.contains("unknown field"), "{text}");
    }
}
