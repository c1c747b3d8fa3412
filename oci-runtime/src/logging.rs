//! runc-style logs: `--log FILE` (else stderr), `--log-format text|json`, `--debug`.
//!
//! Lines look like runc's (logrus) so that containerd can read them:
//! text `time="2026-11-25T16:03:48.000000000Z" level=error msg="..."`, json
//! `{"level":"error","msg":"...","time":"..."}`. The subscriber is installed for the calling
//! thread only ([`tracing::subscriber::set_default`]), so it also works inside `zvm`, which
//! has its own global subscriber.

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `time="..." level=... msg="..."`.
    Text,
    /// One JSON object per line.
    Json,
}

/// The log file could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Opening the file failed.
    #[error("cannot open log file {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// Keeps the thread's subscriber installed.
#[derive(Debug)]
pub struct LogGuard {
    _default: tracing::subscriber::DefaultGuard,
    to_file: bool,
}

impl LogGuard {
    /// Whether logs go to a file (then errors are printed on stderr as well).
    pub fn to_file(&self) -> bool {
        self.to_file
    }
}

struct RuncLayer {
    sink: Mutex<Box<dyn Write + Send>>,
    format: LogFormat,
    max: Level,
}

#[derive(Default)]
struct Fields {
    message: String,
    extra: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.extra
                .push((field.name().to_string(), value.to_string()));
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.extra
                .push((field.name().to_string(), format!("{value:?}")));
        }
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

impl<S: Subscriber> Layer<S> for RuncLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        if level > self.max {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let time = crate::host::rfc3339(std::time::SystemTime::now());
        let level = level.as_str().to_ascii_lowercase();
        let line = match self.format {
            LogFormat::Json => {
                let mut obj = serde_json::Map::new();
                obj.insert("level".into(), level.into());
                obj.insert("msg".into(), fields.message.into());
                obj.insert("time".into(), time.into());
                for (k, v) in fields.extra {
                    obj.insert(k, v.into());
                }
                serde_json::Value::Object(obj).to_string()
            }
            LogFormat::Text => {
                let mut s = format!(
                    "time=\"{time}\" level={level} msg={}",
                    quote(&fields.message)
                );
                for (k, v) in fields.extra {
                    let _ = write!(s, " {k}={}", quote(&v));
                }
                s
            }
        };
        if let Ok(mut sink) = self.sink.lock() {
            let _ = writeln!(sink, "{line}");
            let _ = sink.flush();
        }
    }
}

/// Installs the logger for this thread: to `file` (appended) or stderr, at debug level with
/// `debug`, else warnings and errors.
pub fn init(file: Option<&Path>, format: LogFormat, debug: bool) -> Result<LogGuard, LogError> {
    let sink: Box<dyn Write + Send> = match file {
        Some(path) => Box::new(
            std::fs::File::options()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| LogError::Open {
                    path: path.to_path_buf(),
                    source,
                })?,
        ),
        None => Box::new(std::io::stderr()),
    };
    let layer = RuncLayer {
        sink: Mutex::new(sink),
        format,
        max: if debug { Level::DEBUG } else { Level::WARN },
    };
    let subscriber = tracing_subscriber::registry().with(layer);
    Ok(LogGuard {
        _default: tracing::subscriber::set_default(subscriber),
        to_file: file.is_some(),
    })
}

/// Sends the whole process's logs (every thread's: the VMM's too), warnings and errors,
/// to `path` (appended), for the hidden sandbox and exec-relay processes, whose standard
/// error is the container's. Does nothing if the file cannot be opened or a process-wide
/// logger is already installed.
pub fn init_process_file(path: &Path) {
    let Ok(file) = std::fs::File::options()
        .create(true)
        .append(true)
        .open(path)
    else {
        return;
    };
    let layer = RuncLayer {
        sink: Mutex::new(Box::new(file)),
        format: LogFormat::Text,
        max: Level::WARN,
    };
    let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer));
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn json_and_text_lines_look_like_runcs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.json");
        {
            let _g = init(Some(&path), LogFormat::Json, false).unwrap();
            tracing::debug!("hidden");
            tracing::error!(id = "c1", "container \"c1\" failed");
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "container \"c1\" failed");
        assert_eq!(v["id"], "c1");
        assert!(v["time"].as_str().unwrap().ends_with('Z'));

        let path = dir.path().join("log.txt");
        {
            let g = init(Some(&path), LogFormat::Text, true).unwrap();
            assert!(g.to_file());
            tracing::debug!("step one");
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("time=\"") && text.contains("level=debug msg=\"step one\""),
            "{text}"
        );
        let err = init(
            Some(&dir.path().join("no/such/dir/log")),
            LogFormat::Text,
            false,
        )
        .unwrap_err();
        assert!(err.to_string().contains("cannot open log file"), "{err}");
    }
}
