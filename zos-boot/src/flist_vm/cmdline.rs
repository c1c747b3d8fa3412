//! Words and kernel command lines: splitting an entrypoint string into arguments, and
//! handing arguments and addresses to a guest on its kernel command line.

use std::net::Ipv4Addr;

/// Errors of this module.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    /// A quote is not closed, or a backslash ends the text.
    #[error("unbalanced quotes or a trailing backslash in `{0}`")]
    Unbalanced(String),
}

/// Splits `text` into words like a POSIX shell would (single and double quotes,
/// backslash escapes, `#` comments; no expansions).
pub fn split_words(text: &str) -> Result<Vec<String>, CmdlineError> {
    shlex::split(text).ok_or_else(|| CmdlineError::Unbalanced(text.to_string()))
}

/// Appends kernel arguments to `cmdline`, before its `--` (the words after `--` belong to
/// init).
pub fn append_args(cmdline: &str, extra: &str) -> String {
    let extra = extra.trim();
    if extra.is_empty() {
        return cmdline.to_string();
    }
    match cmdline.split_once(" -- ") {
        Some((kernel, init)) => format!("{kernel} {extra} -- {init}"),
        None if cmdline.ends_with(" --") => format!("{} {extra} --", &cmdline[..cmdline.len() - 3]),
        None => format!("{cmdline} {extra}"),
    }
}

/// An address for the guest's kernel IP autoconfiguration (`ip=` of Linux's IP_PNP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestAddress {
    /// The guest's address.
    pub ip: Ipv4Addr,
    /// Prefix length of its network.
    pub prefix: u8,
    /// The gateway (the node's bridge address).
    pub gateway: Option<Ipv4Addr>,
}

/// `ip=<client>::<gw>:<netmask>::<device>:off` for interface `eth<index>`.
pub fn ip_arg(addr: &GuestAddress, index: usize) -> String {
    let mask = if addr.prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(addr.prefix.min(32)))
    };
    let gw = addr.gateway.map(|g| g.to_string()).unwrap_or_default();
    format!(
        "ip={}::{gw}:{}::eth{index}:off",
        addr.ip,
        Ipv4Addr::from(mask)
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn w(s: &str) -> Vec<String> {
        split_words(s).unwrap()
    }

    #[test]
    fn splits_like_a_shell() {
        assert_eq!(
            w("/bin/sh -c 'echo hi there'"),
            ["/bin/sh", "-c", "echo hi there"]
        );
        assert_eq!(w(r#"a "b \"c\"" d\ e ''"#), ["a", r#"b "c""#, "d e", ""]);
        assert_eq!(w("  "), Vec::<String>::new());
        assert_eq!(w("run # a comment"), ["run"]);
        for bad in ["'open", "\"open", "x\\"] {
            assert_eq!(split_words(bad), Err(CmdlineError::Unbalanced(bad.into())));
        }
    }

    #[test]
    fn appended_arguments_stay_before_init_arguments() {
        assert_eq!(
            append_args("console=ttyS0 init=/bin/sh -- -c x", "ip=1"),
            "console=ttyS0 init=/bin/sh ip=1 -- -c x"
        );
        assert_eq!(append_args("console=ttyS0", "ip=1"), "console=ttyS0 ip=1");
        assert_eq!(append_args("a --", "b"), "a b --");
        assert_eq!(append_args("a", "  "), "a");
    }

    #[test]
    fn ip_autoconfiguration_argument() {
        let a = GuestAddress {
            ip: "10.20.0.5".parse().unwrap(),
            prefix: 24,
            gateway: Some("10.20.0.1".parse().unwrap()),
        };
        assert_eq!(
            ip_arg(&a, 0),
            "ip=10.20.0.5::10.20.0.1:255.255.255.0::eth0:off"
        );
        let b = GuestAddress {
            ip: "192.168.1.9".parse().unwrap(),
            prefix: 16,
            gateway: None,
        };
        assert_eq!(ip_arg(&b, 1), "ip=192.168.1.9:::255.255.0.0::eth1:off");
    }
}
