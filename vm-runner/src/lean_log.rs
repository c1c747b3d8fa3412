//! zvm-vmm's log: the lines zvm's own logger (zvm's `api::logger`) writes (the level,
//! right-aligned and coloured on a terminal, the origin when asked, then the message and
//! its fields) on standard error or, after `PUT /logger`, in a file or named pipe, filtered
//! by one level and perhaps a module: without tracing-subscriber's filter and formatting
//! machinery (which would be most of the lean executable's resident code).

use crate::api::LogControl;
use crate::log_output::{check_module_path, level_colour, level_name, open_log_path, LoggerError};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{IsTerminal, Write as _};
use std::sync::{Arc, Mutex, MutexGuard};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};

/// What the log writes, and where.
#[derive(Debug)]
struct LogConfig {
    /// The most verbose level written (None: off).
    max: Option<Level>,
    /// Only events whose target starts with this.
    module: Option<String>,
    show_level: bool,
    show_origin: bool,
    /// The destination (None: standard error).
    file: Option<File>,
    /// Colour the level (standard error on a terminal only).
    colour: bool,
}

/// The shared configuration.
#[derive(Debug, Clone)]
struct Shared(Arc<Mutex<LogConfig>>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, LogConfig> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The subscriber.
struct LineLog(Shared);

/// The log's handle: `PUT /logger` reconfigures it ([`LogControl`]).
#[derive(Debug)]
pub struct LineLogControl {
    config: Shared,
    stderr_is_terminal: bool,
}

/// The level a name (one of [`crate::handover::LOG_LEVELS`]) stands for; anything else
/// is `info`; None for `off`.
fn parse_level(level: &str) -> Option<Level> {
    match level {
        "off" => None,
        "error" => Some(Level::ERROR),
        "warn" => Some(Level::WARN),
        "debug" => Some(Level::DEBUG),
        "trace" => Some(Level::TRACE),
        _ => Some(Level::INFO),
    }
}

impl LineLogControl {
    fn new(level: &str, stderr_is_terminal: bool) -> Self {
        let config = LogConfig {
            max: parse_level(level),
            module: None,
            show_level: true,
            show_origin: false,
            file: None,
            colour: stderr_is_terminal,
        };
        LineLogControl {
            config: Shared(Arc::new(Mutex::new(config))),
            stderr_is_terminal,
        }
    }

    /// A log that is not the global subscriber, for tests.
    pub fn detached() -> Self {
        Self::new("info", false)
    }
}

/// Installs the log with `level` (one of [`crate::handover::LOG_LEVELS`]; anything else
/// is `info`) on standard error; returns its handle.
pub fn init(level: &str) -> LineLogControl {
    let control = LineLogControl::new(level, std::io::stderr().is_terminal());
    let _ = tracing::subscriber::set_global_default(LineLog(control.config.clone()));
    control
}

impl LogControl for LineLogControl {
    fn configure(&mut self, request: &api_server::model::Logger) -> Result<(), LoggerError> {
        let file = open_log_path(request.log_path.as_ref())?;
        if let Some(module) = &request.module {
            check_module_path(module)?;
        }
        let mut config = self.config.lock();
        if let Some(level) = request.level {
            config.max = parse_level(level_name(level));
        }
        if let Some(module) = &request.module {
            config.module = Some(module.clone());
        }
        if let Some(show) = request.show_level {
            config.show_level = show;
        }
        if let Some(show) = request.show_log_origin {
            config.show_origin = show;
        }
        if let Some(file) = file {
            config.file = Some(file);
        }
        config.colour = self.stderr_is_terminal && config.file.is_none();
        drop(config);
        // Callsites cached what the old level let through.
        tracing::callsite::rebuild_interest_cache();
        Ok(())
    }
}

/// Writes an event's fields as tracing-subscriber's default format does: the message,
/// then ` name=value` for the others.
struct Fields(String);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            if !self.0.is_empty() {
                self.0.push(' ');
            }
            let _ = write!(self.0, "{}={value:?}", field.name());
        }
    }
}

impl LogConfig {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.max.is_some_and(|max| *metadata.level() <= max)
            && self
                .module
                .as_ref()
                .is_none_or(|m| metadata.target().starts_with(m.as_str()))
    }

    /// The line for `event`.
    fn line(&self, event: &Event<'_>) -> String {
        let meta = event.metadata();
        let mut line = String::new();
        if self.show_level {
            let level = *meta.level();
            if self.colour {
                let _ = write!(line, "{}{level:>5}\x1b[0m ", level_colour(level));
            } else {
                let _ = write!(line, "{level:>5} ");
            }
        }
        if self.show_origin {
            let file = meta.file().unwrap_or("?");
            let _ = write!(line, "{file}:{}: ", meta.line().unwrap_or(0));
        }
        let mut fields = Fields(line);
        event.record(&mut fields);
        let mut line = fields.0;
        line.push('\n');
        line
    }
}

impl Subscriber for LineLog {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        // Asked again after each reconfiguration (rebuild_interest_cache).
        if self.0.lock().enabled(metadata) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.0.lock().enabled(metadata)
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(
            self.0
                .lock()
                .max
                .map_or(tracing::level_filters::LevelFilter::OFF, Into::into),
        )
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut config = self.0.lock();
        let line = config.line(event);
        let _ = match &mut config.file {
            Some(file) => file.write_all(line.as_bytes()),
            None => std::io::stderr().lock().write_all(line.as_bytes()),
        };
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_as_the_default_format() {
        struct Capture(std::sync::Mutex<String>);
        impl Subscriber for Capture {
            fn enabled(&self, _: &Metadata<'_>) -> bool {
                true
            }
            fn new_span(&self, _: &Attributes<'_>) -> Id {
                Id::from_u64(1)
            }
            fn record(&self, _: &Id, _: &Record<'_>) {}
            fn record_follows_from(&self, _: &Id, _: &Id) {}
            fn event(&self, event: &Event<'_>) {
                let mut fields = Fields(String::new());
                event.record(&mut fields);
                *self.0.lock().expect("lock") = fields.0;
            }
            fn enter(&self, _: &Id) {}
            fn exit(&self, _: &Id) {}
        }
        let capture = std::sync::Arc::new(Capture(Default::default()));
        tracing::subscriber::with_default(capture.clone(), || {
            tracing::info!(kind = ?Some(1), name = "a b", "booting {}", "x");
        });
        let got = capture.0.lock().expect("lock").clone();
        assert_eq!(got, r#"booting x kind=Some(1) name="a b""#);
    }

    #[test]
    fn put_logger_moves_and_filters_the_lean_log() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("log");
        let mut control = LineLogControl::detached();
        let log = std::sync::Arc::new(LineLog(control.config.clone()));
        let request = |v: serde_json::Value| -> api_server::model::Logger {
            serde_json::from_value(v).expect("a logger request")
        };
        control
            .configure(&request(serde_json::json!({
                "log_path": path, "level": "Debug", "show_log_origin": true,
            })))
            .expect("configured");
        tracing::subscriber::with_default(log.clone(), || {
            tracing::debug!(n = 1, "one");
            tracing::trace!("not written");
        });
        let text = std::fs::read_to_string(&path).expect("log");
        assert!(
            text.starts_with("DEBUG vm-runner/src/lean_log.rs:"),
            "{text}"
        );
        assert!(text.ends_with(": one n=1\n"), "{text}");
        control
            .configure(&request(serde_json::json!({
                "level": "Info", "show_level": false, "show_log_origin": false,
                "module": "api_server",
            })))
            .expect("configured");
        tracing::subscriber::with_default(log, || {
            tracing::info!("not api_server's");
            tracing::info!(target: "api_server::routes", "two");
        });
        let text = std::fs::read_to_string(&path).expect("log");
        assert!(text.ends_with("n=1\ntwo\n"), "{text}");
        let bad = request(serde_json::json!({"module": "a b"}));
        assert!(control.configure(&bad).is_err());
        let bad = request(serde_json::json!({"log_path": "/nonexistent/dir/log"}));
        let e = control.configure(&bad).expect_err("no such dir");
        assert!(e.to_string().contains("/nonexistent/dir/log"), "{e}");
    }
}
