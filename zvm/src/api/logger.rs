//! zvm's log output (`tracing`): standard error by default; `PUT /logger` (and a config
//! file's `logger` section) moves it to a file or named pipe and sets its level, module
//! filter and line prefixes, as Firecracker's logger does.

use api_server::model::Logger;
use std::fs::File;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{reload, EnvFilter, Registry};
use vm_runner::api::LogControl;
use vm_runner::log_output::{
    check_module_path, level_colour, level_name, open_log_path, LoggerError,
};

/// Where log lines go: standard error until a log path is set; held in memory while
/// [`Logging::hold`] is in force.
#[derive(Debug, Clone, Default)]
struct Sink(Arc<Mutex<SinkState>>);

#[derive(Debug, Default)]
struct SinkState {
    file: Option<File>,
    held: Option<Vec<u8>>,
}

impl Sink {
    fn state(&self) -> std::sync::MutexGuard<'_, SinkState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the held lines to `to` (or standard error) and sends later lines there.
    fn release(&self, to: Option<File>) {
        let mut state = self.state();
        let held = state.held.take().unwrap_or_default();
        if let Some(file) = to {
            state.file = Some(file);
        }
        let _ = match &mut state.file {
            Some(file) => file.write_all(&held),
            None => io::stderr().write_all(&held),
        };
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut state = self.state();
        let state = &mut *state;
        match (&mut state.held, &mut state.file) {
            (Some(held), _) => {
                held.extend_from_slice(buf);
                Ok(buf.len())
            }
            (None, Some(file)) => file.write(buf),
            (None, None) => io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = Sink;

    fn make_writer(&'a self) -> Sink {
        self.clone()
    }
}

/// The line format: `[LEVEL ][file:line: ]message`, the prefixes switchable at run time.
#[derive(Debug, Clone)]
struct LineFormat {
    show_level: Arc<AtomicBool>,
    show_origin: Arc<AtomicBool>,
    /// Colour the level (standard error on a terminal only).
    colour: Arc<AtomicBool>,
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        if self.show_level.load(Ordering::Relaxed) {
            let level = *meta.level();
            if self.colour.load(Ordering::Relaxed) {
                write!(writer, "{}{level:>5}\x1b[0m ", level_colour(level))?;
            } else {
                write!(writer, "{level:>5} ")?;
            }
        }
        if self.show_origin.load(Ordering::Relaxed) {
            write!(
                writer,
                "{}:{}: ",
                meta.file().unwrap_or("?"),
                meta.line().unwrap_or(0)
            )?;
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// zvm's logging, reconfigurable while it runs.
pub struct Logging {
    filter: reload::Handle<EnvFilter, Registry>,
    level: String,
    module: Option<String>,
    format: LineFormat,
    sink: Sink,
    stderr_is_terminal: bool,
}

impl std::fmt::Debug for Logging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Logging(level {}, module {:?})", self.level, self.module)
    }
}

impl Logging {
    /// Installs the global subscriber: standard error, `level` (an `EnvFilter` directive,
    /// `info` if it does not parse), levels shown, origins not.
    pub fn init(level: &str) -> Logging {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let (filter, handle) = reload::Layer::new(
            EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info")),
        );
        let stderr_is_terminal = io::IsTerminal::is_terminal(&io::stderr());
        let format = LineFormat {
            show_level: Arc::new(AtomicBool::new(true)),
            show_origin: Arc::new(AtomicBool::new(false)),
            colour: Arc::new(AtomicBool::new(stderr_is_terminal)),
        };
        let sink = Sink::default();
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(sink.clone())
            .event_format(format.clone());
        tracing_subscriber::registry()
            .with(filter)
            .with(layer)
            .init();
        Logging {
            filter: handle,
            level: level.to_string(),
            module: None,
            format,
            sink,
            stderr_is_terminal,
        }
    }

    /// The level (or filter) the log was set up with.
    pub fn level(&self) -> &str {
        &self.level
    }

    /// Keeps log lines in memory (uncoloured) until [`Self::release`]: while zvm cannot
    /// tell yet whether they belong on the terminal or in a container's log file.
    pub fn hold(&self) {
        self.format.colour.store(false, Ordering::Relaxed);
        self.sink.state().held.get_or_insert_with(Vec::new);
    }

    /// Ends [`Self::hold`]: the lines held go to `to` (which then takes every later line)
    /// or, with None, to where they went before.
    pub fn release(&self, to: Option<File>) {
        let to_file = to.is_some();
        self.sink.release(to);
        let on_stderr = !to_file && self.sink.state().file.is_none();
        self.format
            .colour
            .store(self.stderr_is_terminal && on_stderr, Ordering::Relaxed);
    }
}

impl LogControl for Logging {
    fn configure(&mut self, request: &Logger) -> Result<(), LoggerError> {
        let file = open_log_path(request.log_path.as_ref())?;
        let level = request
            .level
            .map_or_else(|| self.level.clone(), |l| level_name(l).to_string());
        let module = request.module.clone().or_else(|| self.module.clone());
        if let Some(m) = &module {
            check_module_path(m)?;
        }
        let directive = filter_directive(&level, module.as_deref());
        let filter = EnvFilter::try_new(&directive).map_err(|e| LoggerError::Filter {
            filter: directive.clone(),
            reason: e.to_string(),
        })?;
        self.filter
            .reload(filter)
            .map_err(|e| LoggerError::Filter {
                filter: directive,
                reason: e.to_string(),
            })?;
        self.level = level;
        self.module = module;
        if let Some(show) = request.show_level {
            self.format.show_level.store(show, Ordering::Relaxed);
        }
        if let Some(show) = request.show_log_origin {
            self.format.show_origin.store(show, Ordering::Relaxed);
        }
        let mut sink = self.sink.state();
        if let Some(file) = file {
            sink.file = Some(file);
        }
        self.format.colour.store(
            self.stderr_is_terminal && sink.file.is_none(),
            Ordering::Relaxed,
        );
        Ok(())
    }
}

/// The filter for `level`, restricted to `module` (a module path prefix such as
/// `vmm::devices`) when one is given.
fn filter_directive(level: &str, module: Option<&str>) -> String {
    match module {
        Some(module) => format!("off,{module}={level}"),
        None => level.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_and_levels() {
        assert_eq!(filter_directive("debug", None), "debug");
        assert_eq!(
            filter_directive("warn", Some("vmm::devices")),
            "off,vmm::devices=warn"
        );
        assert!(EnvFilter::try_new(filter_directive("info", Some("vmm::vm"))).is_ok());
    }

    #[test]
    fn held_lines_go_where_they_are_released_to() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("log");
        let mut sink = Sink::default();
        sink.state().held = Some(Vec::new());
        sink.write_all(b"one\n").expect("held");
        assert!(!path.exists());
        sink.release(Some(
            vm_runner::log_output::open_append(&path).expect("log file"),
        ));
        sink.write_all(b"two\n").expect("to the file");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "one\ntwo\n");
        assert!(sink.state().held.is_none());
    }
}
