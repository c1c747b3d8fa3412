//! Running a VMM process and timing what it prints.
//!
//! The clock starts just before `spawn()`. A reader thread takes the child's stdout as it
//! arrives (one `read` per pipe chunk), timestamps each chunk, splits it into lines and
//! reports the first moment each marker string appears, whether or not its line is
//! complete yet: a marker is "seen" when the byte that completes it reaches us. The main
//! thread can sample the child (for instance its memory) the moment a marker arrives.

use crate::error::{BenchError, Result};
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How a watched process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// It exited by itself before we were done with it (exit code, if any).
    Exited(Option<i32>),
    /// We killed it after the last marker.
    Killed,
    /// We killed it because the time limit passed first.
    TimedOut,
}

/// What one watched run produced.
#[derive(Debug)]
pub struct RunOutput<T> {
    /// Time from spawn to each marker (same order as the markers), `None` if never seen.
    pub marks: Vec<Option<Duration>>,
    /// The sample taken when the sampling marker appeared.
    pub sample: Option<T>,
    /// Console lines with the time they were completed (a last partial line included).
    pub lines: Vec<(Duration, String)>,
    /// Everything the process wrote on stderr.
    pub stderr: String,
    /// How it ended.
    pub ending: Ending,
}

impl<T> RunOutput<T> {
    /// The last `n` console lines and the stderr, for error messages.
    pub fn tail(&self, n: usize) -> String {
        let start = self.lines.len().saturating_sub(n);
        let console: Vec<&str> = self.lines[start..]
            .iter()
            .map(|(_, l)| l.as_str())
            .collect();
        format!(
            "ended {:?}; console tail:\n{}\nstderr:\n{}",
            self.ending,
            console.join("\n"),
            self.stderr.trim_end()
        )
    }
}

/// What to watch for in one run.
#[derive(Debug, Clone)]
pub struct Watch<'a> {
    /// Strings to time, in any order; the run is over when all have been seen.
    pub markers: &'a [&'a str],
    /// Index in `markers` at which to call the sampler.
    pub sample_at: Option<usize>,
    /// Time limit for the whole run.
    pub timeout: Duration,
}

enum Event {
    Marker(usize, Instant),
    Eof,
}

/// Splits stdout chunks into lines and finds markers; kept apart from the I/O so that it
/// can be tested.
#[derive(Debug)]
pub struct LineScanner {
    markers: Vec<Vec<u8>>,
    seen: Vec<bool>,
    partial: Vec<u8>,
}

impl LineScanner {
    /// Scans for `markers`.
    pub fn new(markers: &[&str]) -> Self {
        LineScanner {
            markers: markers.iter().map(|m| m.as_bytes().to_vec()).collect(),
            seen: vec![false; markers.len()],
            partial: Vec::new(),
        }
    }

    /// Feeds one chunk; returns the completed lines and the indexes of markers seen for
    /// the first time (in the completed lines or in the unfinished last line).
    pub fn feed(&mut self, chunk: &[u8]) -> (Vec<String>, Vec<usize>) {
        let mut lines = Vec::new();
        let mut found = Vec::new();
        for &b in chunk {
            if b == b'\n' {
                self.check(&mut found);
                let line = String::from_utf8_lossy(&self.partial)
                    .trim_end_matches('\r')
                    .to_string();
                lines.push(line);
                self.partial.clear();
            } else {
                self.partial.push(b);
            }
        }
        self.check(&mut found);
        (lines, found)
    }

    /// The unfinished last line, if any.
    pub fn rest(&self) -> Option<String> {
        (!self.partial.is_empty()).then(|| String::from_utf8_lossy(&self.partial).into_owned())
    }

    fn check(&mut self, found: &mut Vec<usize>) {
        for (i, marker) in self.markers.iter().enumerate() {
            if !self.seen[i] && contains(&self.partial, marker) {
                self.seen[i] = true;
                found.push(i);
            }
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn read_stdout(
    mut out: impl Read,
    markers: &[&str],
    start: Instant,
    events: mpsc::Sender<Event>,
) -> Vec<(Duration, String)> {
    let mut scanner = LineScanner::new(markers);
    let mut lines = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = match out.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let now = Instant::now();
        let (done, found) = scanner.feed(&buf[..n]);
        for i in found {
            let _ = events.send(Event::Marker(i, now));
        }
        lines.extend(done.into_iter().map(|l| (now - start, l)));
    }
    if let Some(rest) = scanner.rest() {
        lines.push((start.elapsed(), rest));
    }
    let _ = events.send(Event::Eof);
    lines
}

fn drain(mut err: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = err.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Kills `child` if it is still running; returns how it ended.
fn finish(child: &mut Child, timed_out: bool) -> Ending {
    if let Ok(Some(status)) = child.try_wait() {
        return Ending::Exited(status.code());
    }
    let _ = child.kill();
    let _ = child.wait();
    if timed_out {
        Ending::TimedOut
    } else {
        Ending::Killed
    }
}

/// Spawns `cmd` (stdin from /dev/null, stdout and stderr piped), times the markers and
/// calls `sample(pid)` when the marker `watch.sample_at` appears. Kills the process once
/// every marker has been seen or the time limit passes, and always waits for it.
pub fn run_watched<T>(
    cmd: &mut Command,
    watch: &Watch<'_>,
    mut sample: impl FnMut(u32) -> T,
) -> Result<RunOutput<T>> {
    let mut sampled = None;
    let out = run_inner(cmd, watch, |i, pid| {
        if watch.sample_at == Some(i) {
            sampled = Some(sample(pid));
        }
    })?;
    Ok(RunOutput {
        marks: out.marks,
        sample: sampled,
        lines: out.lines,
        stderr: out.stderr,
        ending: out.ending,
    })
}

/// Like [`run_watched`], but calls `sample(pid)` at every marker (`watch.sample_at` is
/// ignored); the samples are in marker order, `None` for markers never seen.
pub fn run_watched_each<T>(
    cmd: &mut Command,
    watch: &Watch<'_>,
    mut sample: impl FnMut(u32) -> T,
) -> Result<RunOutput<Vec<Option<T>>>> {
    let mut samples: Vec<Option<T>> = (0..watch.markers.len()).map(|_| None).collect();
    let out = run_inner(cmd, watch, |i, pid| {
        if let Some(slot) = samples.get_mut(i) {
            *slot = Some(sample(pid));
        }
    })?;
    Ok(RunOutput {
        marks: out.marks,
        sample: Some(samples),
        lines: out.lines,
        stderr: out.stderr,
        ending: out.ending,
    })
}

fn run_inner(
    cmd: &mut Command,
    watch: &Watch<'_>,
    mut on_marker: impl FnMut(usize, u32),
) -> Result<RunOutput<()>> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|source| BenchError::Spawn {
        program: program.clone(),
        source,
    })?;
    let pid = child.id();
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        finish(&mut child, false);
        return Err(BenchError::Spawn {
            program,
            source: std::io::Error::other("no stdout/stderr pipe"),
        });
    };
    let (tx, rx) = mpsc::channel();
    let markers: Vec<String> = watch.markers.iter().map(|m| (*m).to_string()).collect();
    let reader = std::thread::spawn(move || {
        let refs: Vec<&str> = markers.iter().map(String::as_str).collect();
        read_stdout(stdout, &refs, start, tx)
    });
    let stderr = drain(stderr);

    let mut marks: Vec<Option<Duration>> = vec![None; watch.markers.len()];
    let deadline = start + watch.timeout;
    let mut timed_out = false;
    while marks.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Event::Marker(i, at)) => {
                on_marker(i, pid);
                marks[i] = Some(at - start);
            }
            Ok(Event::Eof) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                break;
            }
        }
    }
    let ending = finish(&mut child, timed_out);
    let lines = reader.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    Ok(RunOutput {
        marks,
        sample: None,
        lines,
        stderr,
        ending,
    })
}

/// The median of `values` (mean of the two middle values for an even count); `None` when
/// empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    })
}

/// `a / b` when both exist and `b` is not zero.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    }
}

/// Milliseconds in a duration, as a float.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Formats an optional number with `decimals` decimals, or "-".
pub fn fmt_opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.decimals$}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn ratio_needs_both_and_a_nonzero_divisor() {
        assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
    }

    #[test]
    fn scanner_reports_markers_once_across_chunks_and_in_partial_lines() {
        let mut s = LineScanner::new(&["Run /init", "!"]);
        let (lines, found) = s.feed(b"[ 1.0] hello\r\n[ 2.0] Run /i");
        assert_eq!(lines, vec!["[ 1.0] hello".to_string()]);
        assert!(found.is_empty());
        let (lines, found) = s.feed(b"nit as init process\n");
        assert_eq!(lines, vec!["[ 2.0] Run /init as init process".to_string()]);
        assert_eq!(found, vec![0]);
        // A marker is seen before its line ends.
        let (lines, found) = s.feed(b"!");
        assert!(lines.is_empty());
        assert_eq!(found, vec![1]);
        let (_, found) = s.feed(b"\nRun /init !\n");
        assert!(found.is_empty());
        assert_eq!(s.rest(), None);
    }

    #[test]
    fn watched_run_times_markers_and_kills_the_process() -> Result<()> {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo one; echo two; exec sleep 30"]);
        let watch = Watch {
            markers: &["one", "two"],
            sample_at: Some(1),
            timeout: Duration::from_secs(20),
        };
        let out = run_watched(&mut cmd, &watch, |pid| pid)?;
        assert!(out.marks.iter().all(Option::is_some));
        assert!(out.sample.is_some());
        assert_eq!(out.ending, Ending::Killed);
        Ok(())
    }

    #[test]
    fn watched_run_times_out() -> Result<()> {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo one; exec sleep 30"]);
        let watch = Watch {
            markers: &["never"],
            sample_at: None,
            timeout: Duration::from_millis(300),
        };
        let out = run_watched(&mut cmd, &watch, |_| ())?;
        assert_eq!(out.marks, vec![None]);
        assert_eq!(out.ending, Ending::TimedOut);
        assert_eq!(out.lines.len(), 1);
        Ok(())
    }
}
