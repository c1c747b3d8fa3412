//! Container flists without a guest agent: the flist's tree becomes an ext4 root disk that
//! also carries the project's service manager (`zvm-init`) as `/.zvm/zvm-init` and one
//! service, `/.zvm/services/entrypoint.yaml`, running the entrypoint with its environment
//! and working directory. The kernel boots `init=/.zvm/zvm-init -- --config /.zvm/services`:
//! zvm-init mounts /proc, /sys and /dev, ignores the words the kernel passes to init, and
//! prints the entrypoint's output on the console.

use super::{cmdline, FlistVmError};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the service manager lives inside the root disk.
pub const INIT_PATH: &str = "/.zvm/zvm-init";
/// Its configuration directory inside the root disk.
pub const SERVICES_DIR: &str = "/.zvm/services";

/// The kernel arguments that start the service manager.
pub fn init_args() -> String {
    format!("init={INIT_PATH} -- --config {SERVICES_DIR}")
}

/// Finds the static `zvm-init`: `$ZVM_INIT`, next to the running program, or the build
/// output of guest/build.sh in this source tree; the first statically linked one wins.
pub fn locate_service_manager() -> Result<PathBuf, FlistVmError> {
    let candidates = [
        std::env::var_os("ZVM_INIT").map(PathBuf::from),
        std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("zvm-init"))),
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(|r| r.join("guest/target/x86_64-unknown-linux-gnu/release/zvm-init")),
        Some(PathBuf::from("/sbin/zvm-init")),
    ];
    candidates
        .into_iter()
        .flatten()
        // A dynamically linked build (e.g. cargo's host build in target/) cannot run in
        // the guest, which has no shared libraries.
        .find(|p| std::fs::read(p).is_ok_and(|b| initramfs::is_static_elf(&b) == Ok(true)))
        .ok_or(FlistVmError::NoServiceManager)
}

/// Quotes a word for zvm-init's command splitter (double quotes, backslash escapes).
fn quote(word: &str) -> String {
    let mut out = String::from("\"");
    for c in word.chars() {
        if matches!(c, '"' | '\\' | '$' | '`') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The service definition running `argv` with `env` in `cwd`.
pub fn service_yaml(
    argv: &[String],
    env: &[(String, String)],
    cwd: &str,
) -> Result<String, FlistVmError> {
    if argv.is_empty() {
        return Err(FlistVmError::Cmdline(cmdline::CmdlineError::Empty));
    }
    if argv
        .iter()
        .chain(env.iter().map(|(_, v)| v))
        .any(|w| w.contains('\n') || w.contains('\0'))
    {
        return Err(FlistVmError::Cmdline(
            cmdline::CmdlineError::Unrepresentable("a word with a newline or NUL".into()),
        ));
    }
    let exec = argv.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ");
    let env: serde_json::Map<String, serde_json::Value> = env
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    // JSON strings and maps are valid YAML flow scalars and mappings.
    let exec = serde_json::Value::String(exec).to_string();
    let env = serde_json::Value::Object(env).to_string();
    let dir = serde_json::Value::String(cwd.to_string()).to_string();
    Ok(format!(
        "exec: {exec}\nlog: stdout\nenv: {env}\ndir: {dir}\n"
    ))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FlistVmError + '_ {
    move |source| FlistVmError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Builds `disk` (ext4, `size` bytes) from the unpacked tree `staging` plus the service
/// manager and the entrypoint service.
pub fn build_root_disk(
    staging: &Path,
    disk: &Path,
    size: u64,
    service: &str,
) -> Result<(), FlistVmError> {
    let init = locate_service_manager()?;
    let zvm_dir = staging.join(".zvm");
    let services = staging.join(SERVICES_DIR.trim_start_matches('/'));
    std::fs::create_dir_all(&services).map_err(io(&services))?;
    let init_dst = staging.join(INIT_PATH.trim_start_matches('/'));
    std::fs::copy(&init, &init_dst).map_err(io(&init_dst))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&init_dst, std::fs::Permissions::from_mode(0o755))
        .map_err(io(&init_dst))?;
    std::fs::set_permissions(&zvm_dir, std::fs::Permissions::from_mode(0o755))
        .map_err(io(&zvm_dir))?;
    let yaml = services.join("entrypoint.yaml");
    std::fs::write(&yaml, service).map_err(io(&yaml))?;
    let tmp = disk.with_extension("ext4.tmp");
    let file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    file.set_len(size).map_err(io(&tmp))?;
    drop(file);
    let out = Command::new("mkfs.ext4")
        .args(["-F", "-q", "-L", "rootfs", "-d"])
        .arg(staging)
        .arg(&tmp)
        .output()
        .map_err(|e| FlistVmError::Mkfs(format!("cannot run mkfs.ext4 (e2fsprogs): {e}")))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(FlistVmError::Mkfs(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    std::fs::rename(&tmp, disk).map_err(io(disk))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_service_carries_arguments_environment_and_directory() {
        let argv: Vec<String> = ["/bin/sh", "-c", r#"echo "hi" $X"#]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let yaml = service_yaml(&argv, &[("X".into(), "a b".into())], "/srv").unwrap();
        assert_eq!(yaml, "exec: \"\\\"/bin/sh\\\" \\\"-c\\\" \\\"echo \\\\\\\"hi\\\\\\\" \\\\$X\\\"\"\nlog: stdout\nenv: {\"X\":\"a b\"}\ndir: \"/srv\"\n");
        assert!(service_yaml(&[], &[], "/").is_err());
        assert!(service_yaml(&["a\nb".to_string()], &[], "/").is_err());
        assert_eq!(
            init_args(),
            "init=/.zvm/zvm-init -- --config /.zvm/services"
        );
    }

    #[test]
    fn words_are_quoted_for_the_service_manager() {
        assert_eq!(quote(r#"a "b" $c \d"#), r#""a \"b\" \$c \\d""#);
    }
}
