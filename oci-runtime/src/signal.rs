//! Signal names and numbers as `runc kill` accepts them: `TERM`, `SIGTERM`, `sigterm`, `15`,
//! `RTMIN+3`.

/// A signal argument that is not a Linux signal.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignalError {
    /// Neither a known name nor a number in 1..=64.
    #[error(
        "unknown signal {0:?}: give a name (TERM, SIGKILL, RTMIN+1, ...) or a number from 1 to 64"
    )]
    Unknown(String),
}

/// Lowest real-time signal number available to applications (glibc reserves 32 and 33).
pub const SIGRTMIN: i32 = 34;
/// Highest real-time signal number on Linux.
pub const SIGRTMAX: i32 = 64;

/// Standard signal names (without the `SIG` prefix) and their numbers on x86_64 Linux.
pub const SIGNALS: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("IOT", libc::SIGIOT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("STKFLT", libc::SIGSTKFLT),
    ("CHLD", libc::SIGCHLD),
    ("CLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("POLL", libc::SIGPOLL),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
    ("RTMIN", SIGRTMIN),
    ("RTMAX", SIGRTMAX),
];

/// Parses a signal: a number from 1 to 64, or a name with or without the `SIG` prefix in
/// any case, including `RTMIN+n` and `RTMAX-n`.
pub fn parse_signal(text: &str) -> Result<i32, SignalError> {
    let unknown = || SignalError::Unknown(text.to_string());
    let trimmed = text.trim();
    if let Ok(n) = trimmed.parse::<i64>() {
        return if (1..=SIGRTMAX as i64).contains(&n) {
            Ok(n as i32)
        } else {
            Err(unknown())
        };
    }
    let upper = trimmed.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(&(_, n)) = SIGNALS.iter().find(|(s, _)| *s == name) {
        return Ok(n);
    }
    let offset = |s: &str| {
        s.parse::<i32>()
            .ok()
            .filter(|n| (0..=SIGRTMAX - SIGRTMIN).contains(n))
    };
    if let Some(n) = name.strip_prefix("RTMIN+").and_then(offset) {
        return Ok(SIGRTMIN + n);
    }
    if let Some(n) = name.strip_prefix("RTMAX-").and_then(offset) {
        return Ok(SIGRTMAX - n);
    }
    Err(unknown())
}

/// The usual name of signal `n` (`SIGTERM`), or its number for the rest.
pub fn signal_name(n: i32) -> String {
    SIGNALS
        .iter()
        .find(|(name, num)| *num == n && !matches!(*name, "IOT" | "CLD" | "POLL"))
        .map(|(name, _)| format!("SIG{name}"))
        .unwrap_or_else(|| n.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_with_and_without_prefix_in_any_case() {
        for text in ["TERM", "SIGTERM", "sigterm", "Term", " 15 ", "15"] {
            assert_eq!(parse_signal(text), Ok(15), "{text}");
        }
        assert_eq!(parse_signal("KILL"), Ok(9));
        assert_eq!(parse_signal("SIGKILL"), Ok(9));
        assert_eq!(parse_signal("hup"), Ok(1));
        assert_eq!(parse_signal("USR1"), Ok(10));
        assert_eq!(parse_signal("SIGUSR2"), Ok(12));
        assert_eq!(parse_signal("CHLD"), Ok(17));
        assert_eq!(parse_signal("WINCH"), Ok(28));
        assert_eq!(parse_signal("SIGSYS"), Ok(31));
    }

    #[test]
    fn real_time_signals() {
        assert_eq!(parse_signal("RTMIN"), Ok(34));
        assert_eq!(parse_signal("SIGRTMIN+3"), Ok(37));
        assert_eq!(parse_signal("RTMAX"), Ok(64));
        assert_eq!(parse_signal("rtmax-4"), Ok(60));
        assert_eq!(parse_signal("64"), Ok(64));
        assert!(parse_signal("RTMIN+31").is_err());
        assert!(parse_signal("RTMAX-x").is_err());
    }

    #[test]
    fn bad_signals_are_clear_errors() {
        for text in [
            "",
            "0",
            "65",
            "-9",
            "SIGFOO",
            "TERMX",
            "9x",
            "99999999999999999999",
        ] {
            let err = parse_signal(text).unwrap_err();
            assert!(err.to_string().contains("unknown signal"), "{text}: {err}");
        }
    }

    #[test]
    fn names_of_numbers() {
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(6), "SIGABRT");
        assert_eq!(signal_name(17), "SIGCHLD");
        assert_eq!(signal_name(40), "40");
    }
}
