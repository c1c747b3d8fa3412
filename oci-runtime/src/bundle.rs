//! OCI bundles: a directory with `config.json` and the root filesystem it names.
//!
//! [`Bundle::load`] reads and checks a bundle before anything is created: the config must
//! parse as an OCI runtime spec of major version 1, name a root directory that exists, and
//! carry a process with arguments and an absolute working directory; hook paths must be
//! absolute and their timeouts positive.

use oci_spec::runtime::{Hook, Spec};
use std::path::{Path, PathBuf};

/// The bundle's configuration file.
pub const CONFIG_NAME: &str = "config.json";

/// What is wrong with a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The bundle path is missing or not a directory.
    #[error("bundle {0} is not a directory")]
    NotADirectory(PathBuf),
    /// There is no config.json in the bundle.
    #[error("bundle {0} has no config.json")]
    MissingConfig(PathBuf),
    /// config.json could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// config.json is not valid JSON or not an OCI runtime config.
    #[error("{path} is not a valid OCI runtime config: {source}")]
    BadJson {
        /// The file.
        path: PathBuf,
        /// Cause, with line and column.
        source: serde_json::Error,
    },
    /// `ociVersion` is absent.
    #[error("config.json has no ociVersion")]
    MissingVersion,
    /// `ociVersion` is not a 1.x version.
    #[error("unsupported ociVersion {0:?}: this runtime implements runtime spec 1.x")]
    UnsupportedVersion(String),
    /// `root` is absent.
    #[error("config.json has no root: root.path is required on Linux")]
    NoRoot,
    /// The root filesystem does not exist.
    #[error("rootfs {0} does not exist")]
    MissingRootfs(PathBuf),
    /// The root filesystem is not a directory.
    #[error("rootfs {0} is not a directory")]
    RootfsNotDirectory(PathBuf),
    /// `process` is absent.
    #[error("config.json has no process: it is required to create a container")]
    NoProcess,
    /// `process.args` is empty.
    #[error("process.args is empty: give the program to run")]
    NoArgs,
    /// `process.cwd` is relative.
    #[error("process.cwd {0:?} is not an absolute path")]
    RelativeCwd(String),
    /// A hook has a relative path or a non-positive timeout.
    #[error("invalid {kind} hook {path}: {reason}")]
    BadHook {
        /// Hook kind.
        kind: &'static str,
        /// Hook path.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
}

/// A loaded and checked bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Absolute, canonical bundle directory.
    pub path: PathBuf,
    /// The parsed config.json.
    pub spec: Spec,
    /// Absolute, canonical root filesystem directory.
    pub rootfs: PathBuf,
}

impl Bundle {
    /// Loads and checks the bundle in `dir` (relative paths are taken from the current
    /// directory).
    pub fn load(dir: &Path) -> Result<Bundle, BundleError> {
        let path = std::fs::canonicalize(dir)
            .map_err(|_| BundleError::NotADirectory(dir.to_path_buf()))?;
        if !path.is_dir() {
            return Err(BundleError::NotADirectory(dir.to_path_buf()));
        }
        let config = path.join(CONFIG_NAME);
        let text = std::fs::read_to_string(&config).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => BundleError::MissingConfig(path.clone()),
            _ => BundleError::Read {
                path: config.clone(),
                source,
            },
        })?;
        let spec = parse_config(&text, &config)?;
        let rootfs = check_spec(&spec, &path)?;
        Ok(Bundle { path, spec, rootfs })
    }
}

/// Whether the spec's process asks for a terminal (`process.terminal`, false when unset).
pub fn wants_terminal(spec: &Spec) -> bool {
    spec.process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false)
}

/// Parses config.json text (`path` is for messages) and checks its `ociVersion`.
pub fn parse_config(text: &str, path: &Path) -> Result<Spec, BundleError> {
    let spec: Spec = serde_json::from_str(text).map_err(|source| BundleError::BadJson {
        path: path.to_path_buf(),
        source,
    })?;
    check_version(spec.version())?;
    Ok(spec)
}

/// Accepts versions `1.<minor>[.<patch>][-suffix]`.
pub fn check_version(version: &str) -> Result<(), BundleError> {
    if version.trim().is_empty() {
        return Err(BundleError::MissingVersion);
    }
    let core = version.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<&str> = core.split('.').collect();
    let numeric = |s: &&str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if parts.len() < 2
        || parts.len() > 3
        || !parts.iter().all(numeric)
        || parts[0].parse::<u64>().ok() != Some(1)
    {
        return Err(BundleError::UnsupportedVersion(version.to_string()));
    }
    Ok(())
}

/// Checks the parts of a spec a container needs; returns the canonical rootfs directory.
pub fn check_spec(spec: &Spec, bundle: &Path) -> Result<PathBuf, BundleError> {
    let root = spec.root().as_ref().ok_or(BundleError::NoRoot)?;
    let rootfs = bundle.join(root.path());
    let rootfs = match std::fs::canonicalize(&rootfs) {
        Ok(p) if p.is_dir() => p,
        Ok(p) => return Err(BundleError::RootfsNotDirectory(p)),
        Err(_) => return Err(BundleError::MissingRootfs(rootfs)),
    };
    let process = spec.process().as_ref().ok_or(BundleError::NoProcess)?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(BundleError::NoArgs);
    }
    let cwd = process.cwd();
    if !cwd.is_absolute() {
        return Err(BundleError::RelativeCwd(cwd.display().to_string()));
    }
    if let Some(hooks) = spec.hooks() {
        for kind in crate::hooks::HookKind::ALL {
            for hook in kind.of(hooks) {
                check_hook(kind.name(), hook)?;
            }
        }
    }
    Ok(rootfs)
}

fn check_hook(kind: &'static str, hook: &Hook) -> Result<(), BundleError> {
    let bad = |reason| BundleError::BadHook {
        kind,
        path: hook.path().clone(),
        reason,
    };
    if !hook.path().is_absolute() {
        return Err(bad("the path must be absolute"));
    }
    if hook.timeout().is_some_and(|t| t <= 0) {
        return Err(bad("timeout must be greater than zero"));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"user":{"uid":0,"gid":0},"args":["sh"],"cwd":"/"}}"#;

    fn bundle_with(config: Option<&str>, rootfs: bool) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        if let Some(c) = config {
            std::fs::write(dir.path().join("config.json"), c).unwrap();
        }
        if rootfs {
            std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        }
        dir
    }

    #[test]
    fn a_minimal_bundle_loads() {
        let dir = bundle_with(Some(MINIMAL), true);
        let b = Bundle::load(dir.path()).unwrap();
        assert_eq!(b.path, std::fs::canonicalize(dir.path()).unwrap());
        assert_eq!(b.rootfs, b.path.join("rootfs"));
        assert_eq!(
            b.spec.process().as_ref().unwrap().args().as_ref().unwrap(),
            &["sh".to_string()]
        );
    }

    #[test]
    fn terminal_is_false_unless_the_process_asks() {
        let spec = |process: &str| {
            let text = format!(r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}}{process}}}"#);
            parse_config(&text, Path::new("config.json")).unwrap()
        };
        assert!(!wants_terminal(&spec("")));
        assert!(!wants_terminal(&spec(
            r#","process":{"user":{"uid":0,"gid":0},"cwd":"/"}"#
        )));
        assert!(wants_terminal(&spec(
            r#","process":{"terminal":true,"user":{"uid":0,"gid":0},"cwd":"/"}"#
        )));
    }

    #[test]
    fn missing_config_is_reported() {
        let dir = bundle_with(None, true);
        let err = Bundle::load(dir.path()).unwrap_err();
        assert!(matches!(err, BundleError::MissingConfig(_)), "{err}");
        assert!(err.to_string().contains("has no config.json"));
        let err = Bundle::load(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(err, BundleError::NotADirectory(_)), "{err}");
    }

    #[test]
    fn bad_json_names_the_file_and_position() {
        let dir = bundle_with(Some("{\"ociVersion\": \"1.0.2\",\n  \"root\": [}"), true);
        let err = Bundle::load(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, BundleError::BadJson { .. }), "{msg}");
        assert!(
            msg.contains("config.json") && msg.contains("line 2"),
            "{msg}"
        );
        let dir = bundle_with(Some(&MINIMAL.replace(r#"["sh"]"#, r#""sh""#)), true);
        assert!(matches!(
            Bundle::load(dir.path()).unwrap_err(),
            BundleError::BadJson { .. }
        ));
    }

    #[test]
    fn versions_other_than_1_x_are_refused() {
        for ok in ["1.0.0", "1.0.2-dev", "1.1.0", "1.2", "1.2.0+dev"] {
            check_version(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "2.0.0", "0.9.0", "1", "1.x", "v1.0.0", "1..0", "1.0.0.0", "abc",
        ] {
            let err = check_version(bad).unwrap_err();
            assert!(
                matches!(err, BundleError::UnsupportedVersion(_)),
                "{bad}: {err}"
            );
        }
        assert!(matches!(
            check_version(""),
            Err(BundleError::MissingVersion)
        ));
        let dir = bundle_with(Some(&MINIMAL.replace("1.0.2", "2.0.0")), true);
        let err = Bundle::load(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("unsupported ociVersion \"2.0.0\""),
            "{err}"
        );
        let dir = bundle_with(Some(&MINIMAL.replace(r#""ociVersion":"1.0.2","#, "")), true);
        assert!(matches!(
            Bundle::load(dir.path()).unwrap_err(),
            BundleError::MissingVersion
        ));
    }

    #[test]
    fn missing_rootfs_root_or_process_are_reported() {
        let dir = bundle_with(Some(MINIMAL), false);
        let err = Bundle::load(dir.path()).unwrap_err();
        assert!(matches!(err, BundleError::MissingRootfs(_)), "{err}");
        assert!(err.to_string().contains("rootfs"), "{err}");
        let dir = bundle_with(Some(MINIMAL), false);
        std::fs::write(dir.path().join("rootfs"), "").unwrap();
        assert!(matches!(
            Bundle::load(dir.path()).unwrap_err(),
            BundleError::RootfsNotDirectory(_)
        ));
        let dir = bundle_with(
            Some(&MINIMAL.replace(r#""root":{"path":"rootfs"},"#, "")),
            true,
        );
        assert!(matches!(
            Bundle::load(dir.path()).unwrap_err(),
            BundleError::NoRoot
        ));
        let dir = bundle_with(
            Some(r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"}}"#),
            true,
        );
        assert!(matches!(
            Bundle::load(dir.path()).unwrap_err(),
            BundleError::NoProcess
        ));
        let dir = bundle_with(Some(&MINIMAL.replace(r#"["sh"]"#, "[]")), true);
        assert!(matches!(
            Bundle::load(dir.path()).unwrap_err(),
            BundleError::NoArgs
        ));
        let dir = bundle_with(
            Some(&MINIMAL.replace(r#""cwd":"/""#, r#""cwd":"tmp""#)),
            true,
        );
        assert!(matches!(
            Bundle::load(dir.path()).unwrap_err(),
            BundleError::RelativeCwd(_)
        ));
    }

    #[test]
    fn hooks_need_absolute_paths_and_positive_timeouts() {
        let with_hooks =
            |hooks: &str| MINIMAL.replace(r#""root""#, &format!(r#""hooks":{hooks},"root""#));
        let dir = bundle_with(
            Some(&with_hooks(r#"{"poststart":[{"path":"hook.sh"}]}"#)),
            true,
        );
        let err = Bundle::load(dir.path()).unwrap_err();
        assert!(
            err.to_string()
                .contains("poststart hook hook.sh: the path must be absolute"),
            "{err}"
        );
        let dir = bundle_with(
            Some(&with_hooks(
                r#"{"createRuntime":[{"path":"/bin/true","timeout":0}]}"#,
            )),
            true,
        );
        let err = Bundle::load(dir.path()).unwrap_err();
        assert!(
            err.to_string()
                .contains("timeout must be greater than zero"),
            "{err}"
        );
        let dir = bundle_with(
            Some(&with_hooks(
                r#"{"prestart":[{"path":"/bin/true","timeout":5}]}"#,
            )),
            true,
        );
        Bundle::load(dir.path()).unwrap();
    }
}
