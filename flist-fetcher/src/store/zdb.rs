//! `zdb://[user:pass@]host[:port]/namespace` store: 0-db over the Redis protocol.
//!
//! Each connection selects the namespace (`SELECT ns [password]`, skipped for
//! no namespace or `default`), then uses `GET key` and `EXISTS key` / `SET key
//! value` on the raw 32-byte id. `zdb:///path/to.sock` connects to a unix socket.
//! A tiny RESP client is built in; idle connections are pooled.

use super::url::StoreUrl;
use super::{strip_password, Error, Store};
use crate::block::{to_hex, Hash, MAX_PLAIN_LEN};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::time::Duration;
use tracing::debug;

/// Default 0-db port.
pub const DEFAULT_PORT: u16 = 9900;
const TIMEOUT: Duration = Duration::from_secs(30);
const MAX_BULK: usize = MAX_PLAIN_LEN * 2;

#[derive(Debug, Clone)]
enum Addr {
    Tcp(String),
    Unix(String),
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

struct Conn {
    io: BufReader<Box<dyn Stream>>,
}

/// A RESP reply.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Simple(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

/// A 0-db (or Redis) namespace.
pub struct ZdbStore {
    url: String,
    name: String,
    addr: Addr,
    namespace: Option<String>,
    password: Option<String>,
    pool: Mutex<Vec<Conn>>,
}

impl ZdbStore {
    /// Opens `zdb://...`; no connection is made until first use.
    pub fn from_url(url: &str, parsed: &StoreUrl) -> Result<Self, Error> {
        let name = strip_password(url);
        let (addr, namespace) = if parsed.host.is_empty() {
            if parsed.path.is_empty() {
                return Err(Error::InvalidUrl {
                    url: name,
                    reason: "missing host (or unix socket path)".into(),
                });
            }
            (Addr::Unix(parsed.path.clone()), None)
        } else {
            let ns = parsed.path.trim_matches('/');
            let ns = (!ns.is_empty()).then(|| ns.to_string());
            (Addr::Tcp(parsed.host_port(DEFAULT_PORT)), ns)
        };
        Ok(ZdbStore {
            url: url.to_string(),
            name,
            addr,
            namespace,
            password: parsed.password.clone(),
            pool: Mutex::new(Vec::new()),
        })
    }

    fn unreachable(&self, reason: impl ToString) -> Error {
        Error::Unreachable {
            store: self.name.clone(),
            reason: reason.to_string(),
        }
    }

    fn connect(&self) -> Result<Conn, Error> {
        let stream: Box<dyn Stream> = match &self.addr {
            Addr::Tcp(hp) => {
                let addrs = hp.to_socket_addrs().map_err(|e| self.unreachable(e))?;
                let mut last = None;
                let mut found = None;
                for a in addrs {
                    match TcpStream::connect_timeout(&a, Duration::from_secs(10)) {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                let s = found.ok_or_else(|| {
                    self.unreachable(
                        last.map_or_else(|| "no address".to_string(), |e| e.to_string()),
                    )
                })?;
                let _ = s.set_nodelay(true);
                s.set_read_timeout(Some(TIMEOUT))
                    .map_err(|e| self.unreachable(e))?;
                s.set_write_timeout(Some(TIMEOUT))
                    .map_err(|e| self.unreachable(e))?;
                Box::new(s)
            }
            Addr::Unix(p) => {
                let s = UnixStream::connect(p).map_err(|e| self.unreachable(e))?;
                s.set_read_timeout(Some(TIMEOUT))
                    .map_err(|e| self.unreachable(e))?;
                s.set_write_timeout(Some(TIMEOUT))
                    .map_err(|e| self.unreachable(e))?;
                Box::new(s)
            }
        };
        let mut conn = Conn {
            io: BufReader::with_capacity(64 * 1024, stream),
        };
        if let Some(ns) = self.namespace.as_deref().filter(|ns| *ns != "default") {
            let mut args: Vec<&[u8]> = vec![b"SELECT", ns.as_bytes()];
            if let Some(p) = &self.password {
                args.push(p.as_bytes());
            }
            match self.command(&mut conn, &args)? {
                Reply::Simple(_) => {}
                other => {
                    return Err(Error::Protocol {
                        store: self.name.clone(),
                        reason: format!("SELECT {ns}: unexpected reply {other:?}"),
                    })
                }
            }
        }
        debug!(store = %self.name, "connected");
        Ok(conn)
    }

    /// Sends one command and reads its reply; server errors become `Protocol`.
    fn command(&self, conn: &mut Conn, args: &[&[u8]]) -> Result<Reply, Error> {
        let mut buf = Vec::with_capacity(64 + args.iter().map(|a| a.len() + 16).sum::<usize>());
        buf.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            buf.extend_from_slice(a);
            buf.extend_from_slice(b"\r\n");
        }
        let io_err = |e: std::io::Error| self.unreachable(format!("connection lost: {e}"));
        conn.io.get_mut().write_all(&buf).map_err(io_err)?;
        conn.io.get_mut().flush().map_err(io_err)?;
        read_reply(&mut conn.io, 0).map_err(|e| match e {
            ReplyError::Io(e) => io_err(e),
            ReplyError::Server(msg) => Error::Protocol {
                store: self.name.clone(),
                reason: format!(
                    "{} failed: {msg}",
                    String::from_utf8_lossy(args.first().copied().unwrap_or(b"command"))
                ),
            },
            ReplyError::Malformed(msg) => Error::Protocol {
                store: self.name.clone(),
                reason: format!("malformed reply: {msg}"),
            },
        })
    }

    /// Runs `f` on a pooled connection; the connection is returned to the pool
    /// only if `f` did not fail at the transport level.
    fn with_conn<T>(&self, f: impl FnOnce(&mut Conn) -> Result<T, Error>) -> Result<T, Error> {
        let pooled = self.pool.lock().map(|mut p| p.pop()).unwrap_or(None);
        let mut conn = match pooled {
            Some(c) => c,
            None => self.connect()?,
        };
        let result = f(&mut conn);
        if !matches!(result, Err(Error::Unreachable { .. })) {
            if let Ok(mut p) = self.pool.lock() {
                p.push(conn);
            }
        }
        result
    }
}

impl Store for ZdbStore {
    fn get(&self, id: &Hash) -> Result<Vec<u8>, Error> {
        match self.with_conn(|c| self.command(c, &[b"GET", id]))? {
            Reply::Bulk(Some(data)) => Ok(data),
            Reply::Bulk(None) => Err(Error::NotFound {
                store: self.name.clone(),
                id: to_hex(id),
            }),
            other => Err(Error::Protocol {
                store: self.name.clone(),
                reason: format!("GET: unexpected reply {other:?}"),
            }),
        }
    }

    fn set(&self, id: &Hash, data: &[u8]) -> Result<(), Error> {
        self.with_conn(|c| {
            if let Reply::Int(1..) = self.command(c, &[b"EXISTS", id])? {
                return Ok(());
            }
            self.command(c, &[b"SET", id, data])?;
            Ok(())
        })
    }

    fn url(&self) -> &str {
        &self.url
    }
}

enum ReplyError {
    Io(std::io::Error),
    Server(String),
    Malformed(String),
}

fn read_line(r: &mut impl BufRead) -> Result<String, ReplyError> {
    let mut line = Vec::new();
    r.by_ref()
        .take(64 * 1024)
        .read_until(b'\n', &mut line)
        .map_err(ReplyError::Io)?;
    if line.is_empty() {
        return Err(ReplyError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    if !line.ends_with(b"\r\n") {
        return Err(ReplyError::Malformed("line not terminated by CRLF".into()));
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).map_err(|_| ReplyError::Malformed("non-UTF-8 header".into()))
}

fn read_reply(r: &mut impl BufRead, depth: usize) -> Result<Reply, ReplyError> {
    if depth > 8 {
        return Err(ReplyError::Malformed("nesting too deep".into()));
    }
    let line = read_line(r)?;
    let (kind, rest) = line.split_at_checked(1).unwrap_or(("", ""));
    let num = |s: &str| {
        s.parse::<i64>()
            .map_err(|_| ReplyError::Malformed(format!("bad length `{s}`")))
    };
    match kind {
        "+" => Ok(Reply::Simple(rest.to_string())),
        "-" => Err(ReplyError::Server(rest.to_string())),
        ":" => Ok(Reply::Int(num(rest)?)),
        "$" => {
            let n = num(rest)?;
            if n < 0 {
                return Ok(Reply::Bulk(None));
            }
            let n = usize::try_from(n).map_err(|_| ReplyError::Malformed("bulk length".into()))?;
            if n > MAX_BULK {
                return Err(ReplyError::Malformed(format!(
                    "bulk of {n} bytes is too large"
                )));
            }
            let mut data = vec![0u8; n + 2];
            r.read_exact(&mut data).map_err(ReplyError::Io)?;
            if !data.ends_with(b"\r\n") {
                return Err(ReplyError::Malformed("bulk not terminated by CRLF".into()));
            }
            data.truncate(n);
            Ok(Reply::Bulk(Some(data)))
        }
        "*" => {
            let n = num(rest)?;
            if n < 0 {
                return Ok(Reply::Array(Vec::new()));
            }
            let n = usize::try_from(n).map_err(|_| ReplyError::Malformed("array length".into()))?;
            if n > 1024 {
                return Err(ReplyError::Malformed("array too long".into()));
            }
            (0..n)
                .map(|_| read_reply(r, depth + 1))
                .collect::<Result<_, _>>()
                .map(Reply::Array)
        }
        _ => Err(ReplyError::Malformed(format!(
            "unknown reply type `{kind}`"
        ))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<Reply, ReplyError> {
        read_reply(&mut BufReader::new(bytes), 0)
    }

    #[test]
    fn replies() {
        assert_eq!(parse(b"+OK\r\n").ok(), Some(Reply::Simple("OK".into())));
        assert_eq!(parse(b":1\r\n").ok(), Some(Reply::Int(1)));
        assert_eq!(parse(b"$-1\r\n").ok(), Some(Reply::Bulk(None)));
        assert_eq!(
            parse(b"$3\r\na\r\n\r\n").ok(),
            Some(Reply::Bulk(Some(b"a\r\n".to_vec())))
        );
        assert_eq!(
            parse(b"*2\r\n:1\r\n$0\r\n\r\n").ok(),
            Some(Reply::Array(vec![Reply::Int(1), Reply::Bulk(Some(vec![]))]))
        );
        assert!(matches!(parse(b"-ERR no\r\n"), Err(ReplyError::Server(_))));
        assert!(matches!(parse(b"$5\r\nab"), Err(ReplyError::Io(_))));
        assert!(matches!(parse(b"?x\r\n"), Err(ReplyError::Malformed(_))));
        assert!(matches!(parse(b""), Err(ReplyError::Io(_))));
    }

    #[test]
    fn url_forms() {
        let p = StoreUrl::parse("zdb://u:pw@127.0.0.1/ns").unwrap();
        let s = ZdbStore::from_url("zdb://u:pw@127.0.0.1/ns", &p).unwrap();
        assert_eq!(s.name, "zdb://u@127.0.0.1/ns");
        assert_eq!(s.namespace.as_deref(), Some("ns"));
        assert_eq!(s.password.as_deref(), Some("pw"));
        assert!(matches!(&s.addr, Addr::Tcp(a) if a == "127.0.0.1:9900"));
        let p = StoreUrl::parse("zdb:///run/zdb.sock").unwrap();
        let s = ZdbStore::from_url("zdb:///run/zdb.sock", &p).unwrap();
        assert!(matches!(&s.addr, Addr::Unix(a) if a == "/run/zdb.sock"));
    }

    #[test]
    fn unreachable() {
        let p = StoreUrl::parse("zdb://127.0.0.1:1/ns").unwrap();
        let s = ZdbStore::from_url("zdb://127.0.0.1:1/ns", &p).unwrap();
        assert!(matches!(s.get(&[0; 32]), Err(Error::Unreachable { .. })));
    }
}
