//! zvm-vmm's log: the lines zvm's own logger (`api::logger`) writes by default (the level,
//! right-aligned and coloured on a terminal, then the message and its fields) on standard
//! error, filtered by one level, without tracing-subscriber's filter and formatting
//! machinery (which would be most of the lean executable's resident code).

use crate::log_output::level_colour;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// The subscriber: a most verbose level (None: off) and whether to colour.
struct LineLog {
    max: Option<Level>,
    colour: bool,
}

/// Installs the log with `level` (one of [`crate::handover::LOG_LEVELS`]; anything else
/// is `info`).
pub fn init(level: &str) {
    let max = match level {
        "off" => None,
        "error" => Some(Level::ERROR),
        "warn" => Some(Level::WARN),
        "debug" => Some(Level::DEBUG),
        "trace" => Some(Level::TRACE),
        _ => Some(Level::INFO),
    };
    let log = LineLog {
        max,
        colour: std::io::stderr().is_terminal(),
    };
    let _ = tracing::subscriber::set_global_default(log);
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

impl Subscriber for LineLog {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.max.is_some_and(|max| *metadata.level() <= max)
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(
            self.max
                .map_or(tracing::level_filters::LevelFilter::OFF, Into::into),
        )
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let level = *event.metadata().level();
        let mut line = if self.colour {
            format!("{}{level:>5}\x1b[0m ", level_colour(level))
        } else {
            format!("{level:>5} ")
        };
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        line.push_str(&fields.0);
        line.push('\n');
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
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
}
