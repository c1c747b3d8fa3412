//! A small parser for store URLs: `scheme://[user[:pass]@]host[:port][/path][?query]`.
//!
//! Only what the store schemes need; `dir://` URLs keep everything after the
//! `//` as a filesystem path.

/// A parsed store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreUrl {
    /// Lower-cased scheme (`dir`, `http`, `https`, `zdb`, ...).
    pub scheme: String,
    /// User name (percent-decoded), if any.
    pub user: Option<String>,
    /// Password (percent-decoded), if any.
    pub password: Option<String>,
    /// Host name or address (IPv6 without brackets); empty for `dir://` and unix sockets.
    pub host: String,
    /// Explicit port.
    pub port: Option<u16>,
    /// Path, starting with `/` when present.
    pub path: String,
    /// Query string without the `?`.
    pub query: Option<String>,
}

/// Percent-decodes `s`; invalid escapes are kept verbatim.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl StoreUrl {
    /// Parses `url`; the error is a human-readable reason.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| "expected scheme://...".to_string())?;
        if scheme.is_empty()
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        {
            return Err(format!("invalid scheme `{scheme}`"));
        }
        let scheme = scheme.to_ascii_lowercase();
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q.to_string())),
            None => (rest, None),
        };
        if scheme == "dir" {
            return Ok(StoreUrl {
                scheme,
                user: None,
                password: None,
                host: String::new(),
                port: None,
                path: rest.to_string(),
                query,
            });
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].to_string()),
            None => (rest, String::new()),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((u, p)) => (Some(decode(u)), Some(decode(p))),
                None => (Some(decode(u)), None),
            },
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| "unterminated [ipv6] host".to_string())?;
            match after.strip_prefix(':') {
                Some(p) => (h.to_string(), Some(p)),
                None if after.is_empty() => (h.to_string(), None),
                None => return Err(format!("garbage after host: `{after}`")),
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        let port = match port {
            None => None,
            Some(p) => Some(
                p.parse::<u16>()
                    .map_err(|_| format!("invalid port `{p}`"))?,
            ),
        };
        Ok(StoreUrl {
            scheme,
            user: user.filter(|u| !u.is_empty()),
            password,
            host,
            port,
            path,
            query,
        })
    }

    /// The host and port as `host:port` (IPv6 bracketed), using `default_port`.
    pub fn host_port(&self, default_port: u16) -> String {
        let port = self.port.unwrap_or(default_port);
        if self.host.contains(':') {
            format!("[{}]:{port}", self.host)
        } else {
            format!("{}:{port}", self.host)
        }
    }
}

/// Removes the password from `url` (`user:pass@` becomes `user@`), leaving
/// everything else byte for byte. URLs without a password are returned as is.
pub fn strip_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_string();
    };
    let user = match userinfo.split_once(':') {
        Some((u, _)) => u,
        None => return url.to_string(),
    };
    let userinfo = if user.is_empty() {
        String::new()
    } else {
        format!("{user}@")
    };
    format!("{scheme}://{userinfo}{host}{}", &rest[end..])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn zdb_full() {
        let u = StoreUrl::parse("zdb://user:p%40ss@hub.grid.tf:9901/ns?x=1").unwrap();
        assert_eq!(u.scheme, "zdb");
        assert_eq!(u.user.as_deref(), Some("user"));
        assert_eq!(u.password.as_deref(), Some("p@ss"));
        assert_eq!(u.host, "hub.grid.tf");
        assert_eq!(u.port, Some(9901));
        assert_eq!(u.path, "/ns");
        assert_eq!(u.query.as_deref(), Some("x=1"));
        assert_eq!(u.host_port(9900), "hub.grid.tf:9901");
    }

    #[test]
    fn ipv6_and_defaults() {
        let u = StoreUrl::parse("http://[::1]:8080/base").unwrap();
        assert_eq!(u.host, "::1");
        assert_eq!(u.host_port(80), "[::1]:8080");
        let u = StoreUrl::parse("zdb://h").unwrap();
        assert_eq!(u.host_port(9900), "h:9900");
        assert_eq!(u.path, "");
    }

    #[test]
    fn dir_keeps_path() {
        let u = StoreUrl::parse("dir:///var/lib/store?layout=nested").unwrap();
        assert_eq!(u.path, "/var/lib/store");
        assert_eq!(u.query.as_deref(), Some("layout=nested"));
    }

    #[test]
    fn bad_urls() {
        assert!(StoreUrl::parse("no-scheme").is_err());
        assert!(StoreUrl::parse("zdb://h:notaport/x").is_err());
        assert!(StoreUrl::parse("://x").is_err());
    }

    #[test]
    fn strips_password_only() {
        assert_eq!(
            strip_password("zdb://user:secret@host:9900/ns"),
            "zdb://user@host:9900/ns"
        );
        assert_eq!(strip_password("zdb://:secret@host/ns"), "zdb://host/ns");
        assert_eq!(strip_password("zdb://user@host/ns"), "zdb://user@host/ns");
        assert_eq!(strip_password("dir:///a/b"), "dir:///a/b");
        assert_eq!(strip_password("http://h/a@b"), "http://h/a@b");
    }

    #[test]
    fn decode_edge_cases() {
        assert_eq!(decode("a%"), "a%");
        assert_eq!(decode("a%4"), "a%4");
        assert_eq!(decode("a%41"), "aA");
        assert_eq!(decode("%zz"), "%zz");
    }
}
