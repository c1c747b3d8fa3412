//! Service definitions: one YAML file per service (`/etc/zinit/<name>.yaml`), zinit's format.
//!
//! ```yaml
//! exec: /usr/bin/zvm node serve --state-dir /var/cache/zos/state
//! test: /usr/bin/zvm node status     # optional: the service is up once this exits 0
//! oneshot: false                     # true: run once; dependents wait for exit 0
//! after: [storage]                   # services that must be up (or done) first
//! log: stdout                        # stdout (console, prefixed) | ring | null
//! env: { RUST_LOG: info }
//! dir: /                             # working directory
//! signal: { stop: SIGTERM }          # the signal that stops it at shutdown
//! shutdown_timeout: 10               # seconds before SIGKILL at shutdown
//! ```
//!
//! Unknown fields are errors, so a typo never silently drops a setting.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What went wrong reading service definitions.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration directory or a file in it could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not a valid service definition.
    #[error("service {service}: {message}")]
    Invalid {
        /// The service (file name without `.yaml`).
        service: String,
        /// What is wrong.
        message: String,
    },
    /// A service waits for a service that does not exist.
    #[error("service {service}: `after` names {missing}, which is not defined")]
    MissingDependency {
        /// The waiting service.
        service: String,
        /// The missing name.
        missing: String,
    },
    /// Services wait for each other in a circle.
    #[error("dependency cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
}

/// Where a service's output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogMode {
    /// To the console, each line prefixed with the service name.
    #[default]
    Stdout,
    /// Kept in a small in-memory ring, shown on the console when the service fails.
    Ring,
    /// Discarded.
    Null,
}

/// Signals section.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct SignalSection {
    stop: Option<String>,
}

/// The YAML document as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    exec: String,
    test: Option<String>,
    #[serde(default)]
    oneshot: bool,
    #[serde(default)]
    after: Vec<String>,
    #[serde(default)]
    log: LogMode,
    #[serde(default)]
    env: BTreeMap<String, String>,
    dir: Option<PathBuf>,
    #[serde(default)]
    signal: SignalSection,
    shutdown_timeout: Option<u64>,
}

/// One validated service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Its name (the file name without `.yaml`).
    pub name: String,
    /// The command, split into words.
    pub exec: Vec<String>,
    /// The readiness test command, split into words.
    pub test: Option<Vec<String>>,
    /// Run once instead of being kept running.
    pub oneshot: bool,
    /// Services that must be up (long-running) or done (oneshot) first.
    pub after: Vec<String>,
    /// Where output goes.
    pub log: LogMode,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub dir: Option<PathBuf>,
    /// The stop signal number.
    pub stop_signal: i32,
    /// Seconds between the stop signal and SIGKILL at shutdown.
    pub shutdown_timeout: u64,
}

/// Default seconds between the stop signal and SIGKILL.
pub const DEFAULT_SHUTDOWN_TIMEOUT: u64 = 10;

/// Parses one service definition.
pub fn parse_service(name: &str, text: &str) -> Result<Service, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        service: name.to_string(),
        message,
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
    {
        return Err(invalid(
            "a service name may hold only letters, digits and - _ . @".into(),
        ));
    }
    let raw: RawService = serde_yaml::from_str(text).map_err(|e| invalid(e.to_string()))?;
    let exec = split_command(&raw.exec).map_err(|e| invalid(format!("exec: {e}")))?;
    if exec.is_empty() {
        return Err(invalid("exec is empty".into()));
    }
    let test = match raw.test.as_deref() {
        Some(t) => {
            let words = split_command(t).map_err(|e| invalid(format!("test: {e}")))?;
            if words.is_empty() {
                return Err(invalid("test is empty".into()));
            }
            Some(words)
        }
        None => None,
    };
    if raw.oneshot && test.is_some() {
        return Err(invalid(
            "a oneshot service has no `test` (it is done when it exits 0)".into(),
        ));
    }
    let stop_signal = match raw.signal.stop.as_deref() {
        Some(s) => signal_number(s).ok_or_else(|| invalid(format!("unknown stop signal {s}")))?,
        None => libc::SIGTERM,
    };
    for dep in &raw.after {
        if dep == name {
            return Err(ConfigError::Cycle(vec![name.to_string(), name.to_string()]));
        }
    }
    Ok(Service {
        name: name.to_string(),
        exec,
        test,
        oneshot: raw.oneshot,
        after: raw.after,
        log: raw.log,
        env: raw.env,
        dir: raw.dir,
        stop_signal,
        shutdown_timeout: raw.shutdown_timeout.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT),
    })
}

/// Reads every `*.yaml` (and `*.yml`) file of `dir`, sorted by name.
pub fn load_dir(dir: &Path) -> Result<Vec<Service>, ConfigError> {
    let read_err = |path: &Path, source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| read_err(dir, e))? {
        let path = entry.map_err(|e| read_err(dir, e))?.path();
        let ext = path.extension().and_then(|e| e.to_str());
        if matches!(ext, Some("yaml" | "yml")) {
            files.push(path);
        }
    }
    files.sort();
    let mut services = Vec::new();
    for path in files {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| read_err(&path, e))?;
        services.push(parse_service(&name, &text)?);
    }
    Ok(services)
}

/// Splits a command line into words as a POSIX shell would: whitespace separates, single
/// quotes keep text as is, double quotes and backslashes work as in a shell, `#` starts a
/// comment (no expansions).
pub fn split_command(line: &str) -> Result<Vec<String>, String> {
    shlex::split(line).ok_or_else(|| "unbalanced quotes or a trailing backslash".to_string())
}

/// A signal number from its name (`SIGTERM`, `TERM`) or number.
pub fn signal_number(name: &str) -> Option<i32> {
    if let Ok(n) = name.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let upper = name.to_ascii_uppercase();
    let short = upper.strip_prefix("SIG").unwrap_or(&upper);
    Some(match short {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "STOP" => libc::SIGSTOP,
        "CONT" => libc::SIGCONT,
        _ => return None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_service() {
        let text = "exec: /usr/bin/zvm node serve --state-dir '/var/cache/zos/state'\n\
                    test: zvm node status\n\
                    after:\n  - storage\n  - net\n\
                    log: ring\n\
                    env:\n  RUST_LOG: debug\n\
                    dir: /tmp\n\
                    signal:\n  stop: SIGINT\n\
                    shutdown_timeout: 3\n";
        let s = parse_service("node", text).unwrap();
        assert_eq!(
            s.exec,
            [
                "/usr/bin/zvm",
                "node",
                "serve",
                "--state-dir",
                "/var/cache/zos/state"
            ]
        );
        assert_eq!(
            s.test.as_deref(),
            Some(&["zvm".to_string(), "node".into(), "status".into()][..])
        );
        assert_eq!(s.after, ["storage", "net"]);
        assert_eq!(s.log, LogMode::Ring);
        assert_eq!(s.env.get("RUST_LOG").map(String::as_str), Some("debug"));
        assert_eq!(s.dir.as_deref(), Some(Path::new("/tmp")));
        assert_eq!(s.stop_signal, libc::SIGINT);
        assert_eq!(s.shutdown_timeout, 3);
        assert!(!s.oneshot);
    }

    #[test]
    fn defaults() {
        let s = parse_service("a", "exec: /bin/true\noneshot: true\n").unwrap();
        assert!(s.oneshot);
        assert_eq!(s.log, LogMode::Stdout);
        assert_eq!(s.stop_signal, libc::SIGTERM);
        assert_eq!(s.shutdown_timeout, DEFAULT_SHUTDOWN_TIMEOUT);
        assert!(s.after.is_empty() && s.env.is_empty() && s.test.is_none());
    }

    #[test]
    fn unknown_field_is_an_error() {
        let e = parse_service("a", "exec: /bin/true\nafer: [b]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("service a") && e.contains("unknown field `afer`"),
            "{e}"
        );
    }

    #[test]
    fn bad_documents_are_errors() {
        for (text, want) in [
            ("oneshot: true\n", "missing field `exec`"),
            ("exec: ''\n", "exec is empty"),
            ("exec: \"echo 'x\"\n", "unbalanced quotes"),
            ("exec: /bin/true\nlog: syslog\n", "unknown variant"),
            (
                "exec: /bin/true\nsignal: {stop: SIGFOO}\n",
                "unknown stop signal",
            ),
            (
                "exec: /bin/true\noneshot: true\ntest: /bin/true\n",
                "oneshot service has no `test`",
            ),
            ("exec: [1, 2\n", "service a"),
            ("- just a list\n", "service a"),
        ] {
            let e = parse_service("a", text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        assert!(parse_service("../x", "exec: /bin/true\n").is_err());
        assert!(matches!(
            parse_service("a", "exec: x\nafter: [a]\n"),
            Err(ConfigError::Cycle(_))
        ));
    }

    #[test]
    fn command_splitting() {
        assert_eq!(split_command("  a  b\tc ").unwrap(), ["a", "b", "c"]);
        assert_eq!(
            split_command(r#"sh -c "echo \"hi\" $X" 'it''s' a\ b"#).unwrap(),
            ["sh", "-c", "echo \"hi\" $X", "its", "a b"]
        );
        assert_eq!(split_command("''").unwrap(), [""]);
        assert!(split_command("a\\").is_err());
        assert!(split_command("\"a").is_err());
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_number("TERM"), Some(libc::SIGTERM));
        assert_eq!(signal_number("sigkill"), Some(libc::SIGKILL));
        assert_eq!(signal_number("2"), Some(2));
        assert_eq!(signal_number("0"), None);
        assert_eq!(signal_number("SIGNOPE"), None);
    }

    #[test]
    fn load_dir_reads_yaml_files_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.yaml"), "exec: /bin/b\n").unwrap();
        std::fs::write(dir.path().join("a.yml"), "exec: /bin/a\n").unwrap();
        std::fs::write(dir.path().join("README"), "not a service").unwrap();
        let names: Vec<_> = load_dir(dir.path())
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["a", "b"]);
        std::fs::write(dir.path().join("c.yaml"), "exec: /bin/c\nbogus: 1\n").unwrap();
        assert!(load_dir(dir.path())
            .unwrap_err()
            .to_string()
            .contains("service c"));
        assert!(matches!(
            load_dir(&dir.path().join("nope")),
            Err(ConfigError::Read { .. })
        ));
    }
}
