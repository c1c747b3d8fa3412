//! Where a container flist's guest console and zvm's own messages go, so that `zvm run
//! --flist` of a container leaves the terminal to the container: its standard output and
//! error are the container's streams, as with `docker run`.
//!
//! By default the guest console (the kernel's lines, the agent's log) and zvm's messages go
//! to a log file: `--flist-work DIR`'s `console.log` (kept), or else a temporary file that
//! is removed after a run that went well and kept when it did not (or with `--verbose`,
//! which prints its path). `--console file:PATH` chooses the file (kept); `--console stdio`
//! puts the console and the messages on standard error (the node daemon's workload
//! processes do so: both streams go to their console.log); `--console off` drops them.
//! When the container does not run to its end, a short reason and the last lines of the
//! log go to standard error.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use vmm::devices::serial::ConsoleSink;

/// How many console lines a failure quotes.
const TAIL_LINES: usize = 20;

/// Errors setting up the container's log.
#[derive(Debug, thiserror::Error)]
pub enum ContainerLogError {
    /// `--console` does not say stdio, off or file:PATH.
    #[error("invalid --console '{0}': expected stdio, off or file:PATH")]
    BadConsole(String),
    /// No temporary log file can be made in the directory.
    #[error("cannot make a console log in {dir}: {source}")]
    Create {
        /// The temporary directory.
        dir: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The log file cannot be made.
    #[error("cannot open the console log {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// Where the console of a container flist's VM goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerConsole {
    /// A file, with zvm's messages; a `temporary` one is removed after a run that went well.
    File {
        /// The log file.
        path: PathBuf,
        /// Chosen by zvm, not asked for.
        temporary: bool,
    },
    /// `--console stdio`: the console and zvm's messages on standard error.
    Stderr,
    /// `--console off`: neither is kept.
    Off,
}

impl ContainerConsole {
    /// Decides from `--console` (None: not given) and `--flist-work`; the temporary log is
    /// made here, private and under a name no one could plant beforehand
    /// (`<temp_dir>/zvm-flist-<random>.log`, see [`crate::private_tmp`]).
    pub fn choose(
        console: Option<&str>,
        flist_work: Option<&Path>,
        temp_dir: &Path,
    ) -> Result<Self, ContainerLogError> {
        match console {
            None => Ok(match flist_work {
                Some(dir) => ContainerConsole::File {
                    path: dir.join("console.log"),
                    temporary: false,
                },
                None => {
                    let (_, path) =
                        crate::private_tmp::kept_file_in(temp_dir, "zvm-flist-", ".log").map_err(
                            |source| ContainerLogError::Create {
                                dir: temp_dir.to_path_buf(),
                                source,
                            },
                        )?;
                    ContainerConsole::File {
                        path,
                        temporary: true,
                    }
                }
            }),
            Some("stdio") => Ok(ContainerConsole::Stderr),
            Some("off") => Ok(ContainerConsole::Off),
            Some(other) => match other.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Ok(ContainerConsole::File {
                    path: PathBuf::from(path),
                    temporary: false,
                }),
                _ => Err(ContainerLogError::BadConsole(other.to_string())),
            },
        }
    }
}

/// The open log of one container run.
#[derive(Debug)]
pub struct ContainerLog {
    dest: ContainerConsole,
    file: Option<File>,
}

impl ContainerLog {
    /// Opens (creating or emptying) the log file, if the console goes to one.
    pub fn open(dest: ContainerConsole) -> Result<Self, ContainerLogError> {
        let file = match &dest {
            ContainerConsole::File { path, temporary } => {
                let open = || -> std::io::Result<File> {
                    let mut options = File::options();
                    options.create(true).append(true);
                    if *temporary {
                        // Made by `choose`: a link put in its place is not followed.
                        options.create(false).custom_flags(libc::O_NOFOLLOW);
                    }
                    let f = options.open(path)?;
                    f.set_len(0)?;
                    Ok(f)
                };
                Some(open().map_err(|source| ContainerLogError::Open {
                    path: path.clone(),
                    source,
                })?)
            }
            ContainerConsole::Stderr | ContainerConsole::Off => None,
        };
        Ok(ContainerLog { dest, file })
    }

    /// The log file, if there is one.
    pub fn path(&self) -> Option<&Path> {
        match &self.dest {
            ContainerConsole::File { path, .. } => Some(path),
            _ => None,
        }
    }

    /// Where the VM's serial console writes.
    pub fn console_sink(&self) -> ConsoleSink {
        match (
            &self.dest,
            self.file.as_ref().and_then(|f| f.try_clone().ok()),
        ) {
            (ContainerConsole::Stderr, _) => ConsoleSink::Writer(Box::new(std::io::stderr())),
            (ContainerConsole::File { .. }, Some(file)) => ConsoleSink::File(file),
            _ => ConsoleSink::Off,
        }
    }

    /// Where zvm's log lines go from now on: the file, nowhere (`off`), or None for
    /// standard error.
    pub fn logger_target(&self) -> Option<File> {
        match &self.dest {
            ContainerConsole::File { .. } => self.file.as_ref().and_then(|f| f.try_clone().ok()),
            ContainerConsole::Off => File::options().write(true).open("/dev/null").ok(),
            ContainerConsole::Stderr => None,
        }
    }

    /// One of zvm's own messages (`zvm: ` is prepended): to the log, standard error or
    /// nowhere, as the console.
    pub fn note(&self, message: &str) {
        match (&self.dest, &self.file) {
            (ContainerConsole::File { .. }, Some(file)) => {
                let _ = writeln!(&*file, "zvm: {message}");
            }
            (ContainerConsole::Stderr, _) => eprintln!("zvm: {message}"),
            _ => {}
        }
    }

    /// What to print on standard error when the container did not run to its end: the
    /// reason, then the end of the log and where it is.
    pub fn failure_report(&self, reason: &str) -> String {
        let mut text = format!("zvm: {reason}\n");
        if let ContainerConsole::File { path, .. } = &self.dest {
            let tail = tail(path, TAIL_LINES);
            if tail.is_empty() {
                text.push_str(&format!(
                    "zvm: the guest wrote nothing to its console ({})\n",
                    path.display()
                ));
            } else {
                text.push_str(&format!(
                    "zvm: the last lines of the guest console ({}):\n",
                    path.display()
                ));
                for line in tail {
                    text.push_str(&format!("  {line}\n"));
                }
            }
        }
        text
    }

    /// Ends the run: a temporary log goes unless `keep` (a failure, or `--verbose`).
    pub fn finish(self, keep: bool) {
        if let ContainerConsole::File {
            path,
            temporary: true,
        } = &self.dest
        {
            if !keep {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// The last `lines` lines of `path` (none if it is missing or empty).
fn tail(path: &Path, lines: usize) -> Vec<String> {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_console_goes_to_a_log_unless_asked_otherwise() {
        let tmp = tempfile::tempdir().unwrap();
        let tmp = tmp.path();
        let ContainerConsole::File { path, temporary } =
            ContainerConsole::choose(None, None, tmp).unwrap()
        else {
            panic!("not a file")
        };
        assert!(temporary);
        assert_eq!(path.parent(), Some(tmp));
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("zvm-flist-") && name.ends_with(".log"),
            "{name}"
        );
        assert!(path.is_file(), "made by choose");
        assert_eq!(
            ContainerConsole::choose(None, Some(Path::new("/w")), tmp).unwrap(),
            ContainerConsole::File {
                path: "/w/console.log".into(),
                temporary: false
            }
        );
        assert_eq!(
            ContainerConsole::choose(Some("file:/l/c.log"), None, tmp).unwrap(),
            ContainerConsole::File {
                path: "/l/c.log".into(),
                temporary: false
            }
        );
        assert_eq!(
            ContainerConsole::choose(Some("stdio"), None, tmp).unwrap(),
            ContainerConsole::Stderr
        );
        assert_eq!(
            ContainerConsole::choose(Some("off"), None, tmp).unwrap(),
            ContainerConsole::Off
        );
        for bad in ["file:", "tty"] {
            let err = ContainerConsole::choose(Some(bad), None, tmp).unwrap_err();
            assert!(err.to_string().contains("stdio, off or file:PATH"), "{err}");
        }
        let err = ContainerConsole::choose(None, None, &tmp.join("missing")).unwrap_err();
        assert!(
            err.to_string().contains("cannot make a console log"),
            "{err}"
        );
    }

    #[test]
    fn the_temporary_log_is_private_and_never_a_planted_file() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tempfile::tempdir().unwrap();
        let secret = victim.path().join("secret");
        std::fs::write(&secret, "keep me").unwrap();
        // What zvm used to open, truncate and write as root: `<tmp>/zvm-flist-<pid>.log`.
        let old = tmp
            .path()
            .join(format!("zvm-flist-{}.log", std::process::id()));
        std::os::unix::fs::symlink(&secret, &old).unwrap();
        let dest = ContainerConsole::choose(None, None, tmp.path()).unwrap();
        let log = ContainerLog::open(dest).unwrap();
        let path = log.path().unwrap().to_path_buf();
        assert_ne!(path, old);
        log.note("hello");
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "zvm: hello\n");
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "keep me");
        log.finish(false);
        assert!(!path.exists());
        // A link swapped in for the made file is not followed.
        let dest = ContainerConsole::choose(None, None, tmp.path()).unwrap();
        let ContainerConsole::File { path, .. } = &dest else {
            panic!("not a file")
        };
        std::fs::remove_file(path).unwrap();
        std::os::unix::fs::symlink(&secret, path).unwrap();
        assert!(ContainerLog::open(dest.clone()).is_err());
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "keep me");
    }

    #[test]
    fn messages_and_failures_quote_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        std::fs::write(&path, "stale\n").unwrap();
        let dest = ContainerConsole::File {
            path: path.clone(),
            temporary: true,
        };
        let log = ContainerLog::open(dest).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "", "emptied");
        let mut console = log.console_sink().into_writer(None);
        for i in 0..30 {
            console
                .write_all(format!("kernel line {i}\r\n").as_bytes())
                .unwrap();
        }
        log.note("guest powered off");
        let report = log.failure_report("the container did not run to its end: boom");
        let lines: Vec<&str> = report.lines().collect();
        assert_eq!(lines[0], "zvm: the container did not run to its end: boom");
        assert!(lines[1].contains(&path.display().to_string()), "{report}");
        assert_eq!(lines[2], "  kernel line 11");
        assert_eq!(lines.last(), Some(&"  zvm: guest powered off"));
        assert_eq!(lines.len(), 2 + TAIL_LINES);
        log.finish(true);
        assert!(path.exists(), "kept after a failure");
        let log = ContainerLog::open(ContainerConsole::File {
            path: path.clone(),
            temporary: true,
        })
        .unwrap();
        assert!(log.failure_report("x").contains("wrote nothing"));
        log.finish(false);
        assert!(!path.exists(), "a temporary log goes after a good run");
        let off = ContainerLog::open(ContainerConsole::Off).unwrap();
        assert_eq!(off.failure_report("why"), "zvm: why\n");
        assert!(off.path().is_none());
    }
}
