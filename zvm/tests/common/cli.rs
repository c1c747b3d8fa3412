//! Running the real `zvm` binary and checking its usage errors.

use std::process::{Command, Output};

/// Runs zvm with `args` and waits for it.
pub fn zvm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zvm"))
        .args(args)
        .output()
        .expect("run zvm")
}

/// What a finished zvm wrote to stderr.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts exit code 2 and a single `zvm: ...` error line containing `needle`.
pub fn expect_usage_error(args: &[&str], needle: &str) {
    let out = zvm(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "args {args:?}: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one error line for {args:?}, got:\n{err}");
    assert!(
        lines[0].starts_with("zvm: ") && lines[0].contains(needle),
        "args {args:?}: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// A temporary file holding `bytes`, to pass as a kernel.
pub fn kernel_file(bytes: &[u8]) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(f.path(), bytes).expect("write");
    f
}
