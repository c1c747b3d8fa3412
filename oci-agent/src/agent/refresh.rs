//! [`RequestBody::Refresh`](agent_protocol::RequestBody::Refresh): what makes a VM restored from
//! a snapshot its own. Every clone of a template starts with the template's kernel RNG state,
//! wall clock and host name; the host hands each clone fresh entropy, the time and a name.

use agent_protocol::{REFRESH_ENTROPY_MAX, REFRESH_ENTROPY_MIN};

use crate::sys::Sys;

/// Longest host name Linux accepts (`HOST_NAME_MAX`).
pub const HOSTNAME_MAX: usize = 64;

/// Checks a Refresh without changing anything: the entropy's size, a non-zero clock, and the
/// host name (1 to [`HOSTNAME_MAX`] bytes, no NUL, no `/`).
pub fn check(entropy: &[u8], realtime_ns: u64, hostname: Option<&str>) -> Result<(), String> {
    if !(REFRESH_ENTROPY_MIN..=REFRESH_ENTROPY_MAX).contains(&entropy.len()) {
        return Err(format!(
            "refresh: {} bytes of entropy, want {REFRESH_ENTROPY_MIN} to {REFRESH_ENTROPY_MAX}",
            entropy.len()
        ));
    }
    if realtime_ns == 0 {
        return Err("refresh: realtime_ns is 0, not a time".into());
    }
    if let Some(name) = hostname {
        if name.is_empty() || name.len() > HOSTNAME_MAX {
            return Err(format!(
                "refresh: host name {name:?} is {} bytes, want 1 to {HOSTNAME_MAX}",
                name.len()
            ));
        }
        if name.contains(['\0', '/']) {
            return Err(format!(
                "refresh: host name {name:?} contains a NUL byte or a '/'"
            ));
        }
    }
    Ok(())
}

/// Checks the request, then mixes the entropy into the kernel's pool (credited) and forces a
/// CRNG reseed, sets `CLOCK_REALTIME`, and sets the host name when given. Nothing is changed
/// when the check fails; a later step's failure names that step (earlier ones took effect).
pub fn apply(
    sys: &mut impl Sys,
    entropy: &[u8],
    realtime_ns: u64,
    hostname: Option<&str>,
) -> Result<(), String> {
    check(entropy, realtime_ns, hostname)?;
    sys.add_entropy(entropy)
        .map_err(|e| format!("refresh: add entropy to the kernel's pool: {e}"))?;
    // Linux (5.18 and later: the 6.1 guest) credits the bytes but reseeds the CRNG only on its
    // own schedule (up to a minute); this ioctl makes every later read use the new seed.
    sys.reseed_crng()
        .map_err(|e| format!("refresh: reseed the kernel's CRNG: {e}"))?;
    sys.set_realtime(realtime_ns)
        .map_err(|e| format!("refresh: set the clock to {realtime_ns} ns: {e}"))?;
    if let Some(name) = hostname {
        sys.sethostname(name)
            .map_err(|e| format!("refresh: set the host name to {name:?}: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testsys::Recorder;

    #[test]
    fn the_three_effects_happen_in_order() {
        let mut r = Recorder::default();
        apply(&mut r, &[9; 64], 1_700_000_000_000_000_001, Some("clone-1")).unwrap();
        assert_eq!(
            r.calls,
            [
                "add_entropy 64 bytes",
                "reseed_crng",
                "set_realtime 1700000000000000001",
                "sethostname clone-1",
            ]
        );
        // Without a host name, the name stays.
        let mut r = Recorder::default();
        apply(&mut r, &[9; REFRESH_ENTROPY_MAX], 1, None).unwrap();
        assert_eq!(r.calls.len(), 3, "{:?}", r.calls);
        assert!(!r.has("sethostname"));
    }

    #[test]
    fn bad_requests_are_refused_before_any_change() {
        let long = "a".repeat(HOSTNAME_MAX + 1);
        let cases: [(&[u8], u64, Option<&str>, &str); 7] = [
            (
                &[1; REFRESH_ENTROPY_MAX + 1],
                1,
                None,
                "513 bytes of entropy, want 32 to 512",
            ),
            (
                &[1; REFRESH_ENTROPY_MIN - 1],
                1,
                None,
                "31 bytes of entropy",
            ),
            (&[], 1, None, "0 bytes of entropy"),
            (&[1; 64], 0, None, "realtime_ns is 0"),
            (&[1; 64], 1, Some(""), "is 0 bytes, want 1 to 64"),
            (&[1; 64], 1, Some(&long), "is 65 bytes, want 1 to 64"),
            (&[1; 64], 1, Some("a/b"), "contains a NUL byte or a '/'"),
        ];
        for (entropy, ns, name, want) in cases {
            let mut r = Recorder::default();
            let err = apply(&mut r, entropy, ns, name).unwrap_err();
            assert!(err.contains(want), "want {want:?} in {err:?}");
            assert!(r.calls.is_empty(), "{:?}", r.calls);
        }
        let mut r = Recorder::default();
        let err = apply(&mut r, &[1; 64], 1, Some("a\0b")).unwrap_err();
        assert!(err.contains("NUL"), "{err}");
        // The longest name Linux takes is fine.
        apply(&mut r, &[1; 64], 1, Some(&long[1..])).unwrap();
    }

    #[test]
    fn a_failing_step_is_named() {
        for (fail, want) in [
            ("add_entropy", "refresh: add entropy to the kernel's pool: "),
            ("reseed_crng", "refresh: reseed the kernel's CRNG: "),
            ("set_realtime", "refresh: set the clock to 5 ns: "),
            ("sethostname", "refresh: set the host name to \"h\": "),
        ] {
            let mut r = Recorder {
                fail_on: Some(fail.into()),
                ..Default::default()
            };
            let err = apply(&mut r, &[1; 32], 5, Some("h")).unwrap_err();
            assert!(err.starts_with(want), "want {want:?}, got {err:?}");
            assert_eq!(r.calls.last().map(|c| c.starts_with(fail)), Some(true));
        }
    }
}
