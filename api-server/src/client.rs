//! A small HTTP/1.1 client for the API socket: one request per connection, for `zvm api`
//! and for tests and benchmarks that drive a VMM.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest response this client reads (headers and body).
pub const MAX_RESPONSE_LEN: usize = 1 << 20;

/// Errors talking to the API socket.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket did not accept the connection.
    #[error("cannot connect to the API socket {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// Sending or receiving failed (or timed out).
    #[error("API socket {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The method is not a plain token, or the path does not start with '/'.
    #[error("invalid request: {0}")]
    BadRequest(String),
    /// What came back is not an HTTP response.
    #[error("malformed response from {path}: {reason}")]
    BadResponse {
        /// The socket.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The reason phrase.
    pub reason: String,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// Whether the status is 4xx or 5xx.
    pub fn is_error(&self) -> bool {
        self.status >= 400
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `method path` with `body` (as JSON) on a new connection to `socket` and reads
/// the response; `timeout` bounds each read and write.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Response, ClientError> {
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(ClientError::BadRequest(format!(
            "method {method:?} is not a word like GET, PUT or PATCH"
        )));
    }
    if !path.starts_with('/')
        || path
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(ClientError::BadRequest(format!(
            "path {path:?} must start with '/' and have no spaces"
        )));
    }
    let io_err = |source| ClientError::Io {
        path: socket.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
    stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
    let body = body.unwrap_or_default();
    let mut message =
        format!("{} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nConnection: close\r\n", method.to_ascii_uppercase())
            .into_bytes();
    if !body.is_empty() {
        message.extend_from_slice(
            format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            )
            .as_bytes(),
        );
    }
    message.extend_from_slice(b"\r\n");
    message.extend_from_slice(body);
    stream.write_all(&message).map_err(io_err)?;
    let mut raw = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).map_err(io_err)?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
        if raw.len() > MAX_RESPONSE_LEN {
            return Err(ClientError::BadResponse {
                path: socket.to_path_buf(),
                reason: format!("longer than {MAX_RESPONSE_LEN} bytes"),
            });
        }
        if let Some(done) = parse(&raw).map_err(|reason| ClientError::BadResponse {
            path: socket.to_path_buf(),
            reason,
        })? {
            return Ok(done);
        }
    }
    match parse(&raw) {
        Ok(Some(done)) => Ok(done),
        Ok(None) => Err(ClientError::BadResponse {
            path: socket.to_path_buf(),
            reason: "the connection closed mid-response".into(),
        }),
        Err(reason) => Err(ClientError::BadResponse {
            path: socket.to_path_buf(),
            reason,
        }),
    }
}

/// Parses a buffered response: `None` while incomplete.
fn parse(raw: &[u8]) -> Result<Option<Response>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(raw).map_err(|e| e.to_string())? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let status = response.code.ok_or("no status code")?;
    let reason = response.reason.unwrap_or("").to_string();
    let length = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| {
            std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or("bad Content-Length")
        })
        .transpose()?
        .unwrap_or(0);
    let body = &raw[head_len..];
    if body.len() < length {
        return Ok(None);
    }
    Ok(Some(Response {
        status,
        reason,
        body: body[..length].to_vec(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_when_complete() {
        assert_eq!(parse(b"HTTP/1.1 204 No Con"), Ok(None));
        let r = parse(b"HTTP/1.1 204 No Content\r\nServer: zvm\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert_eq!(
            (r.status, r.reason.as_str(), r.body.len()),
            (204, "No Content", 0)
        );
        let partial = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 10\r\n\r\n{\"a\":";
        assert_eq!(parse(partial), Ok(None));
        let r = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}extra")
            .expect("valid")
            .expect("complete");
        assert_eq!(
            (r.status, r.text().as_str(), r.is_error()),
            (200, "{}", false)
        );
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
        assert!(parse(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn bad_requests_and_absent_sockets_are_errors() {
        let t = Duration::from_secs(1);
        let sock = Path::new("/nonexistent/zvm.sock");
        assert!(matches!(
            request(sock, "G T", "/", None, t),
            Err(ClientError::BadRequest(_))
        ));
        assert!(matches!(
            request(sock, "GET", "vm", None, t),
            Err(ClientError::BadRequest(_))
        ));
        assert!(matches!(
            request(sock, "GET", "/a b", None, t),
            Err(ClientError::BadRequest(_))
        ));
        let err = request(sock, "GET", "/", None, t).expect_err("no socket");
        assert!(err.to_string().contains("/nonexistent/zvm.sock"), "{err}");
    }
}
