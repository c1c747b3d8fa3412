//! `zvm api SOCKET METHOD PATH [BODY]`: one request to a running zvm's API, for humans
//! and scripts. The status line goes to standard error, the body (pretty JSON when it is
//! JSON) to standard output; the exit code is 0 for a success, 1 for a 4xx/5xx answer,
//! 2 when the request could not be made.

use api_server::client::{request, Response};
use clap::Args;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Arguments of `zvm api`.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// The API socket of a running zvm (its `--api-sock`).
    socket: PathBuf,
    /// GET, PUT or PATCH.
    method: String,
    /// The resource, e.g. `/`, `/machine-config` or `/actions`.
    path: String,
    /// The JSON body; `@FILE` reads it from a file, `-` from standard input.
    body: Option<String>,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

/// The body to send, from the argument, a file or standard input.
fn body_of(arg: Option<&str>) -> Result<Option<Vec<u8>>, String> {
    match arg {
        None => Ok(None),
        Some("-") => {
            let mut body = Vec::new();
            std::io::stdin()
                .read_to_end(&mut body)
                .map_err(|e| format!("cannot read the body from standard input: {e}"))?;
            Ok(Some(body))
        }
        Some(arg) => match arg.strip_prefix('@') {
            Some(file) => std::fs::read(file)
                .map(Some)
                .map_err(|e| format!("cannot read the body from {file}: {e}")),
            None => Ok(Some(arg.as_bytes().to_vec())),
        },
    }
}

/// The body as printed: indented JSON when it parses, else as it came.
fn render(response: &Response) -> String {
    match serde_json::from_slice::<serde_json::Value>(&response.body) {
        Ok(value) => serde_json::to_string_pretty(&value).unwrap_or_else(|_| response.text()),
        Err(_) => response.text(),
    }
}

/// Runs `zvm api`.
pub fn run(args: ApiArgs) -> ExitCode {
    let body = match body_of(args.body.as_deref()) {
        Ok(body) => body,
        Err(e) => {
            eprintln!("zvm: {e}");
            return ExitCode::from(2);
        }
    };
    let response = match request(
        &args.socket,
        &args.method,
        &args.path,
        body.as_deref(),
        Duration::from_secs(args.timeout),
    ) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("zvm: {e}");
            return ExitCode::from(2);
        }
    };
    eprintln!("HTTP {} {}", response.status, response.reason);
    if !response.body.is_empty() {
        println!("{}", render(&response));
    }
    if response.is_error() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_come_from_arguments_and_files() {
        assert_eq!(body_of(None), Ok(None));
        assert_eq!(
            body_of(Some(r#"{"a":1}"#)),
            Ok(Some(br#"{"a":1}"#.to_vec()))
        );
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("body.json");
        std::fs::write(&file, "{}").expect("write");
        assert_eq!(
            body_of(Some(&format!("@{}", file.display()))),
            Ok(Some(b"{}".to_vec()))
        );
        assert!(body_of(Some("@/nonexistent/body.json"))
            .expect_err("missing")
            .contains("/nonexistent/body.json"));
    }

    #[test]
    fn json_bodies_are_indented() {
        let r = Response {
            status: 200,
            reason: "OK".into(),
            body: br#"{"state":"Running"}"#.to_vec(),
        };
        assert_eq!(render(&r), "{\n  \"state\": \"Running\"\n}");
        let r = Response {
            status: 400,
            reason: "Bad Request".into(),
            body: b"not json".to_vec(),
        };
        assert_eq!(render(&r), "not json");
    }
}
