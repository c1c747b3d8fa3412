//! Words and kernel command lines: splitting an entrypoint string into arguments, and
//! handing arguments, environment and addresses to a guest on its kernel command line.

use std::net::Ipv4Addr;

/// Errors of this module.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    /// A quote is not closed.
    #[error("unterminated {0} quote")]
    Unterminated(char),
    /// A backslash ends the text.
    #[error("trailing backslash")]
    TrailingBackslash,
    /// No words at all.
    #[error("empty command")]
    Empty,
    /// The kernel's parser cannot carry this word.
    #[error("`{0}` cannot be passed on a kernel command line (it contains a double quote or a control character)")]
    Unrepresentable(String),
}

/// Splits `text` into words like a POSIX shell would (single and double quotes,
/// backslash escapes; no expansions).
pub fn split_words(text: &str) -> Result<Vec<String>, CmdlineError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(CmdlineError::Unterminated('\'')),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(CmdlineError::Unterminated('"')),
                        },
                        Some(c) => word.push(c),
                        None => return Err(CmdlineError::Unterminated('"')),
                    }
                }
            }
            '\\' => {
                in_word = true;
                word.push(chars.next().ok_or(CmdlineError::TrailingBackslash)?);
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Quotes one word for the kernel's command-line parser (which strips double quotes and
/// knows no escapes).
pub fn kernel_word(word: &str) -> Result<String, CmdlineError> {
    if word.contains('"') || word.chars().any(|c| c.is_control()) {
        return Err(CmdlineError::Unrepresentable(word.to_string()));
    }
    Ok(if word.is_empty() || word.contains(char::is_whitespace) {
        format!("\"{word}\"")
    } else {
        word.to_string()
    })
}

/// Kernel arguments that make `argv` the guest's PID 1 with `env` as its environment:
/// `init=ARGV0 K="V" ... -- ARG1 ARG2`. Linux hands `K=V` words it does not know to init as
/// environment and the words after `--` as its arguments.
pub fn init_args(argv: &[String], env: &[(String, String)]) -> Result<String, CmdlineError> {
    let (program, rest) = argv.split_first().ok_or(CmdlineError::Empty)?;
    let mut out = format!("init={}", kernel_word(program)?);
    for (k, v) in env {
        if k.contains(|c: char| c == '.' || c == '=' || c.is_whitespace()) {
            return Err(CmdlineError::Unrepresentable(k.clone()));
        }
        out.push_str(&format!(" {k}={}", kernel_word(v)?));
    }
    if !rest.is_empty() {
        out.push_str(" --");
        for arg in rest {
            out.push(' ');
            out.push_str(&kernel_word(arg)?);
        }
    }
    Ok(out)
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
        assert_eq!(split_words("'open"), Err(CmdlineError::Unterminated('\'')));
        assert_eq!(split_words("\"open"), Err(CmdlineError::Unterminated('"')));
        assert_eq!(split_words("x\\"), Err(CmdlineError::TrailingBackslash));
    }

    #[test]
    fn init_arguments_for_the_kernel() {
        let argv = w("/bin/sh -c 'echo hi'");
        let env = vec![("MODE".to_string(), "a b".to_string())];
        assert_eq!(
            init_args(&argv, &env).unwrap(),
            r#"init=/bin/sh MODE="a b" -- -c "echo hi""#
        );
        assert_eq!(init_args(&w("/sbin/init"), &[]).unwrap(), "init=/sbin/init");
        assert_eq!(init_args(&[], &[]), Err(CmdlineError::Empty));
        assert!(matches!(
            init_args(&w(r#"/bin/echo 'say "x"'"#), &[]),
            Err(CmdlineError::Unrepresentable(_))
        ));
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
