//! Small host helpers of the cli layer: RFC 3339 timestamps, `/proc/<pid>/stat`, pid files,
//! atomic writes.

use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Formats `t` as an RFC 3339 UTC timestamp with nanoseconds, as runc prints `created`
/// (`2026-11-25T16:03:51.321545923Z`).
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The fields of `/proc/<pid>/stat` the runtime uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Process state letter (`R`, `S`, `Z`, ...).
    pub state: char,
    /// Parent pid.
    pub ppid: i32,
    /// Session id.
    pub session: i32,
    /// Start time in clock ticks after boot; tells a process from a later one with its pid.
    pub start_time: u64,
}

impl ProcStat {
    /// Parses the text of `/proc/<pid>/stat`; the command name may hold spaces and parentheses.
    pub fn parse(text: &str) -> Option<ProcStat> {
        let rest = &text[text.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        Some(ProcStat {
            state: fields.first()?.chars().next()?,
            ppid: fields.get(1)?.parse().ok()?,
            session: fields.get(3)?.parse().ok()?,
            start_time: fields.get(19)?.parse().ok()?,
        })
    }

    /// Reads `/proc/<pid>/stat`; `None` if there is no such process.
    pub fn read(pid: i32) -> Option<ProcStat> {
        if pid <= 0 {
            return None;
        }
        ProcStat::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// Whether the process has ended (a zombie or dead entry).
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Whether `pid` is a live process that started at `start_time` (when known): a zombie, a
/// missing pid or a pid reused by a later process count as not alive.
pub fn process_alive(pid: i32, start_time: Option<u64>) -> bool {
    match ProcStat::read(pid) {
        Some(st) => !st.is_dead() && start_time.is_none_or(|t| t == st.start_time),
        None => false,
    }
}

/// Pids of the live processes whose session id is `sid`, sorted.
pub fn session_members(sid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| ProcStat::read(pid).is_some_and(|st| st.session == sid && !st.is_dead()))
        .collect();
    pids.sort_unstable();
    pids
}

/// Writes `data` to `path` atomically: a temporary file beside it, then `rename`.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_data()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes a pid file as runc does: the pid in decimal, no newline, atomically.
pub fn write_pid_file(path: &Path, pid: i32) -> std::io::Result<()> {
    write_atomic(path, pid.to_string().as_bytes())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::new(1_795_622_631, 321_545_923);
        assert_eq!(rfc3339(t), "2026-11-25T16:03:51.321545923Z");
        // A leap day.
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.000000000Z");
    }

    #[test]
    fn proc_stat_parses_names_with_spaces_and_parentheses() {
        let text =
            "1234 (a b) (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 200";
        let st = ProcStat::parse(text).unwrap();
        assert_eq!(
            st,
            ProcStat {
                state: 'S',
                ppid: 1,
                session: 1234,
                start_time: 98765
            }
        );
        assert!(ProcStat::parse("garbage").is_none());
        assert!(ProcStat::parse("1 (x) S 1").is_none());
    }

    #[test]
    fn own_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = std::process::id() as i32;
        let st = ProcStat::read(me).unwrap();
        assert!(process_alive(me, Some(st.start_time)));
        assert!(process_alive(me, None));
        assert!(!process_alive(me, Some(st.start_time + 1)));
        assert!(!process_alive(0, None));
        assert!(!process_alive(-5, None));
    }

    #[test]
    fn atomic_write_and_pid_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pid");
        write_pid_file(&p, 42).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "42");
        write_atomic(&p, b"x").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"x");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
        assert!(write_atomic(&dir.path().join("missing/pid"), b"1").is_err());
    }
}
