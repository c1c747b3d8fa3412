//! A minimal, strict HTTP/1.1 server side: an incremental request parser and a response
//! writer.
//!
//! The parser works on whatever bytes a connection has buffered so far and says either
//! "need more", "here is one complete request, it used N bytes" or "this request is
//! refused" ([`HttpError`], answered with [`HttpError::status`] and the connection closed).
//! Limits: the request line and headers fit in [`MAX_HEADERS_LEN`] bytes, the body in
//! [`MAX_BODY_LEN`]; a body is framed by `Content-Length` only (chunked is refused).
//! Only GET, PUT and PATCH are served. Connections are kept alive by default on
//! HTTP/1.1; `Connection: close` (or HTTP/1.0 without `keep-alive`) closes after the reply.

use std::fmt;

/// Largest request line plus headers, in bytes.
pub const MAX_HEADERS_LEN: usize = 8 * 1024;
/// Largest request body, in bytes.
pub const MAX_BODY_LEN: usize = 64 * 1024;
/// Most header fields in one request.
const MAX_HEADER_COUNT: usize = 64;

/// The interim reply to a client that sent `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The request methods this server serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`
    Get,
    /// `PUT`
    Put,
    /// `PATCH`
    Patch,
}

impl Method {
    /// The method's name as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One complete, framed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The path of the request target, without any query string.
    pub path: String,
    /// The body (empty when there is no `Content-Length`).
    pub body: Vec<u8>,
    /// Whether the connection stays open after the reply.
    pub keep_alive: bool,
}

/// The outcome of parsing a connection's buffered bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete {
        /// The headers are complete and the client sent `Expect: 100-continue`: it
        /// waits for [`CONTINUE`] before sending the body.
        expects_continue: bool,
        /// The length of the whole request, once its headers are known: parsing again
        /// before that many bytes are buffered is pointless.
        total_len: Option<usize>,
    },
    /// One request, which used the first `consumed` bytes of the buffer.
    Complete {
        /// The request.
        request: Request,
        /// How many bytes of the buffer it used.
        consumed: usize,
    },
}

/// Why a request is refused. Each is answered with [`HttpError::status`] and the
/// connection is closed afterwards (its framing may be lost).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The request line and headers are longer than [`MAX_HEADERS_LEN`], or too many.
    #[error("request headers exceed {MAX_HEADERS_LEN} bytes or {MAX_HEADER_COUNT} fields")]
    HeadersTooLarge,
    /// The announced body is longer than [`MAX_BODY_LEN`].
    #[error("request body of {0} bytes exceeds the limit of {MAX_BODY_LEN} bytes")]
    PayloadTooLarge(u64),
    /// A method other than GET, PUT or PATCH.
    #[error("method {0} is not allowed (GET, PUT and PATCH only)")]
    MethodNotAllowed(String),
    /// A `Transfer-Encoding` header (chunked bodies are not supported).
    #[error("Transfer-Encoding is not supported; send the body with a Content-Length")]
    TransferEncoding,
    /// A missing, malformed or repeated-and-different `Content-Length`.
    #[error("invalid Content-Length header")]
    InvalidContentLength,
    /// Anything else that is not a well-formed HTTP/1.x request.
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
}

impl HttpError {
    /// The status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            HttpError::HeadersTooLarge => StatusCode::HEADER_FIELDS_TOO_LARGE,
            HttpError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            HttpError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            HttpError::TransferEncoding
            | HttpError::InvalidContentLength
            | HttpError::Malformed(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// Parses the first request in `buf`.
///
/// Never reads past what the headers announce: with a `Content-Length` over the limit the
/// error comes as soon as the headers are complete, before any of the body is needed.
pub fn parse_request(buf: &[u8]) -> Result<Parsed, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADER_COUNT];
    let mut req = httparse::Request::new(&mut headers);
    let header_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEADERS_LEN {
                return Err(HttpError::HeadersTooLarge);
            }
            return Ok(Parsed::Incomplete {
                expects_continue: false,
                total_len: None,
            });
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadersTooLarge),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    if header_len > MAX_HEADERS_LEN {
        return Err(HttpError::HeadersTooLarge);
    }
    let method = match req.method {
        Some("GET") => Method::Get,
        Some("PUT") => Method::Put,
        Some("PATCH") => Method::Patch,
        Some(other) => return Err(HttpError::MethodNotAllowed(other.to_string())),
        None => return Err(HttpError::Malformed("no method".into())),
    };
    let target = req
        .path
        .ok_or_else(|| HttpError::Malformed("no request target".into()))?;
    if !target.starts_with('/') {
        return Err(HttpError::Malformed(format!(
            "request target {target:?} is not an absolute path"
        )));
    }
    let path = target
        .split(['?', '#'])
        .next()
        .unwrap_or_default()
        .to_string();
    let http11 = match req.version {
        Some(1) => true,
        Some(0) => false,
        _ => return Err(HttpError::Malformed("unsupported HTTP version".into())),
    };

    let mut content_length: Option<u64> = None;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expects_continue = false;
    for header in req.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            let value = parse_content_length(header.value)?;
            if content_length.is_some_and(|v| v != value) {
                return Err(HttpError::InvalidContentLength);
            }
            content_length = Some(value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::TransferEncoding);
        } else if name.eq_ignore_ascii_case("connection") {
            let value = std::str::from_utf8(header.value).unwrap_or_default();
            for token in value.split(',').map(str::trim) {
                close |= token.eq_ignore_ascii_case("close");
                keep_alive_token |= token.eq_ignore_ascii_case("keep-alive");
            }
        } else if name.eq_ignore_ascii_case("expect") {
            expects_continue = header.value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    let keep_alive = !close && (http11 || keep_alive_token);
    let body_len = content_length.unwrap_or(0);
    if body_len > MAX_BODY_LEN as u64 {
        return Err(HttpError::PayloadTooLarge(body_len));
    }
    // Fits in usize: bounded by MAX_BODY_LEN just above.
    let total = header_len + body_len as usize;
    if buf.len() < total {
        return Ok(Parsed::Incomplete {
            expects_continue: expects_continue && body_len > 0,
            total_len: Some(total),
        });
    }
    let request = Request {
        method,
        path,
        body: buf[header_len..total].to_vec(),
        keep_alive,
    };
    Ok(Parsed::Complete {
        request,
        consumed: total,
    })
}

/// A `Content-Length` value: one or more ASCII digits, nothing else.
fn parse_content_length(value: &[u8]) -> Result<u64, HttpError> {
    let text = std::str::from_utf8(value)
        .map_err(|_| HttpError::InvalidContentLength)?
        .trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HttpError::InvalidContentLength);
    }
    // Too many digits for a u64 is certainly too large a body.
    Ok(text.parse::<u64>().unwrap_or(u64::MAX))
}

/// An HTTP status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusCode(pub u16);

impl StatusCode {
    /// 200
    pub const OK: StatusCode = StatusCode(200);
    /// 204
    pub const NO_CONTENT: StatusCode = StatusCode(204);
    /// 400
    pub const BAD_REQUEST: StatusCode = StatusCode(400);
    /// 404
    pub const NOT_FOUND: StatusCode = StatusCode(404);
    /// 405
    pub const METHOD_NOT_ALLOWED: StatusCode = StatusCode(405);
    /// 408
    pub const REQUEST_TIMEOUT: StatusCode = StatusCode(408);
    /// 409
    pub const CONFLICT: StatusCode = StatusCode(409);
    /// 413
    pub const PAYLOAD_TOO_LARGE: StatusCode = StatusCode(413);
    /// 431
    pub const HEADER_FIELDS_TOO_LARGE: StatusCode = StatusCode(431);
    /// 500
    pub const INTERNAL_SERVER_ERROR: StatusCode = StatusCode(500);
    /// 503
    pub const SERVICE_UNAVAILABLE: StatusCode = StatusCode(503);

    /// The standard reason phrase.
    pub fn reason(self) -> &'static str {
        match self.0 {
            200 => "OK",
            204 => "No Content",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            409 => "Conflict",
            413 => "Payload Too Large",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            503 => "Service Unavailable",
            _ => "Status",
        }
    }
}

/// A response, written with [`Response::write_to`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status.
    pub status: StatusCode,
    /// A JSON body, or empty for none.
    pub body: Vec<u8>,
    /// Send `Connection: close` and close the connection after this response.
    pub close: bool,
    /// The `Allow` header of a 405 response.
    pub allow: Option<&'static str>,
}

impl Response {
    /// A response with no body (status 204 is the usual one).
    pub fn empty(status: StatusCode) -> Self {
        Response {
            status,
            body: Vec::new(),
            close: false,
            allow: None,
        }
    }

    /// A response with a JSON body.
    pub fn json(status: StatusCode, value: &serde_json::Value) -> Self {
        Response {
            status,
            body: value.to_string().into_bytes(),
            close: false,
            allow: None,
        }
    }

    /// An error response with body `{"fault_message": message}`, as Firecracker sends.
    pub fn fault(status: StatusCode, message: impl Into<String>) -> Self {
        Self::json(
            status,
            &serde_json::json!({ "fault_message": message.into() }),
        )
    }

    /// Appends the response, head and body, to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        // Writing into a Vec cannot fail.
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\nServer: zvm\r\n",
            self.status.0,
            self.status.reason()
        );
        if let Some(allow) = self.allow {
            let _ = write!(out, "Allow: {allow}\r\n");
        }
        if self.close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        // RFC 9110: no Content-Length on 204.
        if self.status != StatusCode::NO_CONTENT {
            if !self.body.is_empty() {
                out.extend_from_slice(b"Content-Type: application/json\r\n");
            }
            let _ = write!(out, "Content-Length: {}\r\n", self.body.len());
        }
        out.extend_from_slice(b"\r\n");
        if self.status != StatusCode::NO_CONTENT {
            out.extend_from_slice(&self.body);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> (Request, usize) {
        match parse_request(buf) {
            Ok(Parsed::Complete { request, consumed }) => (request, consumed),
            other => panic!("expected a complete request, got {other:?}"),
        }
    }

    #[test]
    fn parses_a_put_with_body() {
        let raw = b"PUT /boot-source HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}";
        let (req, used) = complete(raw);
        assert_eq!(used, raw.len());
        assert_eq!(req.method, Method::Put);
        assert_eq!(req.path, "/boot-source");
        assert_eq!(req.body, b"{}");
        assert!(req.keep_alive);
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let raw = b"PATCH /vm?x=1 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        for end in 0..raw.len() {
            assert!(
                matches!(parse_request(&raw[..end]), Ok(Parsed::Incomplete { .. })),
                "prefix {end}"
            );
        }
        let (req, _) = complete(raw);
        assert_eq!(req.path, "/vm");
    }

    #[test]
    fn pipelined_requests_are_taken_one_at_a_time() {
        let raw = b"GET / HTTP/1.1\r\n\r\nGET /version HTTP/1.1\r\n\r\n";
        let (first, used) = complete(raw);
        assert_eq!(first.path, "/");
        let (second, used2) = complete(&raw[used..]);
        assert_eq!(second.path, "/version");
        assert_eq!(used + used2, raw.len());
    }

    #[test]
    fn connection_handling() {
        assert!(
            !complete(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
                .0
                .keep_alive
        );
        assert!(!complete(b"GET / HTTP/1.0\r\n\r\n").0.keep_alive);
        assert!(
            complete(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
                .0
                .keep_alive
        );
        assert!(
            complete(b"GET / HTTP/1.1\r\nconnection: keep-alive\r\n\r\n")
                .0
                .keep_alive
        );
    }

    #[test]
    fn refusals() {
        let err = |raw: &[u8]| parse_request(raw).expect_err("refused");
        assert_eq!(
            err(b"DELETE / HTTP/1.1\r\n\r\n"),
            HttpError::MethodNotAllowed("DELETE".into())
        );
        assert_eq!(
            err(b"POST / HTTP/1.1\r\n\r\n").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            err(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            HttpError::TransferEncoding
        );
        assert_eq!(
            err(b"PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            HttpError::InvalidContentLength
        );
        assert_eq!(
            err(b"PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            HttpError::InvalidContentLength
        );
        assert_eq!(
            err(b"PUT / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n").status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            err(b"PUT / HTTP/1.1\r\nContent-Length: 65537\r\n\r\n"),
            HttpError::PayloadTooLarge(65537)
        );
        assert!(matches!(
            err(b"GET http://x/ HTTP/1.1\r\n\r\n"),
            HttpError::Malformed(_)
        ));
        assert!(matches!(
            err(b"GET / HTTP/2.0\r\n\r\n"),
            HttpError::Malformed(_)
        ));
        assert!(matches!(
            err(b"\x01\x02 / HTTP/1.1\r\n\r\n"),
            HttpError::Malformed(_)
        ));
    }

    #[test]
    fn a_body_at_the_limit_is_accepted() {
        let mut raw =
            format!("PUT /x HTTP/1.1\r\nContent-Length: {MAX_BODY_LEN}\r\n\r\n").into_bytes();
        assert!(matches!(
            parse_request(&raw),
            Ok(Parsed::Incomplete { total_len: Some(n), .. }) if n == raw.len() + MAX_BODY_LEN
        ));
        raw.resize(raw.len() + MAX_BODY_LEN, b' ');
        assert_eq!(complete(&raw).0.body.len(), MAX_BODY_LEN);
    }

    #[test]
    fn oversized_headers_are_refused_complete_or_not() {
        let big = format!(
            "GET / HTTP/1.1\r\nX-Big: {}\r\n",
            "a".repeat(MAX_HEADERS_LEN)
        );
        assert_eq!(
            parse_request(big.as_bytes()),
            Err(HttpError::HeadersTooLarge)
        );
        let done = format!("{big}\r\n");
        assert_eq!(
            parse_request(done.as_bytes()),
            Err(HttpError::HeadersTooLarge)
        );
        let many: String = (0..100).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(
            parse_request(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            Err(HttpError::HeadersTooLarge)
        );
    }

    #[test]
    fn expect_continue_is_reported_once_headers_are_in() {
        let raw = b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(
            parse_request(raw),
            Ok(Parsed::Incomplete {
                expects_continue: true,
                total_len: Some(raw.len() + 3)
            })
        );
    }

    #[test]
    fn responses_are_well_formed() {
        let mut out = Vec::new();
        Response::empty(StatusCode::NO_CONTENT).write_to(&mut out);
        assert_eq!(out, b"HTTP/1.1 204 No Content\r\nServer: zvm\r\n\r\n");
        out.clear();
        let mut fault = Response::fault(StatusCode::BAD_REQUEST, "nope");
        fault.close = true;
        fault.write_to(&mut out);
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.contains("Content-Length: 24\r\n"), "{text}");
        assert!(
            text.ends_with("\r\n\r\n{\"fault_message\":\"nope\"}"),
            "{text}"
        );
    }
}
