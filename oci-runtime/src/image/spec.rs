//! The runtime `config.json` derived from an image configuration (the image spec's
//! "conversion" rules): `process.args` = Entrypoint + Cmd, `env`, `cwd` = WorkingDir or `/`,
//! `user` from User, annotations from the image.

use super::fs::RootDir;
use super::layout::Image;
use super::user::{self, ResolvedUser};
use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{Process, Root, Spec, User};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use tracing::warn;

/// `PATH` given to a process whose image sets none (runc's and Docker's default).
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Entrypoint, Cmd and Env together larger than this (bytes of their strings) are refused: a
/// process cannot be started with more (Linux's default `ARG_MAX` is 2 MiB, shared with the
/// stack's other contents).
pub const MAX_PROCESS_BYTES: usize = 1 << 20;

/// Errors deriving the runtime configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image's User cannot be resolved.
    #[error(transparent)]
    User(#[from] user::Error),
    /// Entrypoint, Cmd and Env are larger than a process can be started with.
    #[error("image config Entrypoint, Cmd and Env hold {entries} strings of {bytes} bytes; at most {MAX_PROCESS_BYTES} bytes are accepted")]
    TooLarge {
        /// how many strings
        entries: usize,
        /// their bytes (each counted with its terminating NUL)
        bytes: usize,
    },
}

/// What an image says to run, resolved against its root filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessConfig {
    /// Entrypoint followed by Cmd (empty when the image sets neither).
    pub args: Vec<String>,
    /// Environment, `KEY=VALUE`, with a default `PATH` when the image has none.
    pub env: Vec<String>,
    /// Working directory (absolute).
    pub cwd: String,
    /// The image's User as written (may be empty).
    pub user: String,
    /// Resolved user id.
    pub uid: u32,
    /// Resolved primary group id.
    pub gid: u32,
    /// Resolved supplementary groups.
    pub additional_gids: Vec<u32>,
}

/// Derives the process from the image configuration; the user is looked up in `root`.
pub fn process_config(config: &ImageConfiguration, root: &RootDir) -> Result<ProcessConfig, Error> {
    let c = config.config().clone().unwrap_or_default();
    let (entries, bytes) = [c.entrypoint(), c.cmd(), c.env()]
        .into_iter()
        .flatten()
        .flatten()
        .fold((0usize, 0usize), |(n, b), s| {
            (n + 1, b.saturating_add(s.len() + 1))
        });
    if bytes > MAX_PROCESS_BYTES {
        return Err(Error::TooLarge { entries, bytes });
    }
    let mut args: Vec<String> = c.entrypoint().clone().unwrap_or_default();
    args.extend(c.cmd().clone().unwrap_or_default());
    let mut env: Vec<String> = Vec::new();
    let mut dropped = 0;
    for e in c.env().clone().unwrap_or_default() {
        if e.split_once('=').is_some_and(|(k, _)| !k.is_empty()) {
            env.push(e);
        } else {
            dropped += 1;
            if dropped <= 8 {
                warn!("image config Env entry `{e}` is not KEY=VALUE; dropped");
            }
        }
    }
    if dropped > 8 {
        warn!("{dropped} image config Env entries in all are not KEY=VALUE; dropped");
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    let cwd = match c.working_dir().as_deref().map(str::trim) {
        None | Some("") => "/".to_string(),
        Some(d) if d.starts_with('/') => d.to_string(),
        Some(d) => format!("/{d}"),
    };
    let user_spec = c.user().clone().unwrap_or_default();
    let ResolvedUser {
        uid,
        gid,
        additional_gids,
        ..
    } = user::resolve(root, &user_spec)?;
    Ok(ProcessConfig {
        args,
        env,
        cwd,
        user: user_spec,
        uid,
        gid,
        additional_gids,
    })
}

/// Annotations for the bundle: the image's labels, the manifest's annotations, and the
/// `org.opencontainers.image.*` keys the conversion rules derive from the configuration.
pub fn annotations(image: &Image) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let cfg = &image.config;
    if let Some(labels) = cfg.config().as_ref().and_then(|c| c.labels().clone()) {
        out.extend(labels);
    }
    if let Some(a) = image.manifest.annotations() {
        out.extend(a.clone());
    }
    let key = |k: &str| format!("org.opencontainers.image.{k}");
    out.insert(key("os"), cfg.os().to_string());
    out.insert(key("architecture"), cfg.architecture().to_string());
    if let Some(v) = cfg.variant() {
        out.insert(key("variant"), v.clone());
    }
    if let Some(v) = cfg.os_version() {
        out.insert(key("os.version"), v.clone());
    }
    if let Some(v) = cfg.os_features() {
        out.insert(key("os.features"), v.join(","));
    }
    if let Some(v) = cfg.author() {
        out.insert(key("author"), v.clone());
    }
    if let Some(v) = cfg.created() {
        out.insert(key("created"), v.clone());
    }
    if let Some(c) = cfg.config() {
        if let Some(v) = c.stop_signal() {
            out.insert(key("stopSignal"), v.clone());
        }
        if let Some(ports) = c.exposed_ports() {
            let mut ports = ports.clone();
            ports.sort();
            out.insert(key("exposedPorts"), ports.join(","));
        }
    }
    out
}

/// The defaults `zvm oci spec` writes ([`crate::templates::default_spec`], runc's: namespaces,
/// mounts, masked and read-only paths, capabilities, rlimits) with a writable root at `rootfs`
/// (images expect to write to their root, as under Docker or containerd) and no terminal.
pub fn default_spec() -> Spec {
    let mut spec = match serde_json::from_value::<Spec>(crate::templates::default_spec(None)) {
        Ok(s) => s,
        Err(e) => {
            warn!("the default spec does not parse ({e}); using oci-spec's defaults");
            let mut s = Spec::default();
            s.set_hostname(Some("zvm".to_string()));
            s
        }
    };
    let mut root = Root::default();
    root.set_path(PathBuf::from("rootfs"));
    root.set_readonly(Some(false));
    spec.set_root(Some(root));
    spec
}

/// `base` with the image's process and annotations.
pub fn runtime_spec(
    mut base: Spec,
    p: &ProcessConfig,
    annotations: HashMap<String, String>,
) -> Spec {
    let mut process = base.process().clone().unwrap_or_default();
    if p.args.is_empty() {
        warn!(
            "the image sets neither Entrypoint nor Cmd; config.json keeps the default args {:?}",
            process.args()
        );
    } else {
        process.set_args(Some(p.args.clone()));
    }
    process.set_env(Some(p.env.clone()));
    process.set_cwd(PathBuf::from(&p.cwd));
    process.set_terminal(Some(false));
    let mut user = User::default();
    user.set_uid(p.uid);
    user.set_gid(p.gid);
    if !p.additional_gids.is_empty() {
        user.set_additional_gids(Some(p.additional_gids.clone()));
    }
    process.set_user(user);
    base.set_process(Some::<Process>(process));
    let mut all = base.annotations().clone().unwrap_or_default();
    all.extend(annotations);
    base.set_annotations(Some(all));
    base
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn process_from_config() {
        let t = tempfile::tempdir().unwrap();
        let root = RootDir::open(t.path()).unwrap();
        let cfg: ImageConfiguration = serde_json::from_str(
            r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},
            "config":{"Entrypoint":["/bin/app"],"Cmd":["--x"],"Env":["A=1","bogus"],"WorkingDir":"srv","User":"5:6"}}"#,
        )
        .unwrap();
        let p = process_config(&cfg, &root).unwrap();
        assert_eq!(p.args, ["/bin/app", "--x"]);
        assert_eq!(p.env, [DEFAULT_PATH, "A=1"]);
        assert_eq!(p.cwd, "/srv");
        assert_eq!((p.uid, p.gid), (5, 6));
        let spec = runtime_spec(
            default_spec(),
            &p,
            HashMap::from([("k".to_string(), "v".to_string())]),
        );
        let proc_ = spec.process().as_ref().unwrap();
        assert_eq!(proc_.args().as_ref().unwrap(), &p.args);
        assert_eq!(proc_.terminal(), Some(false));
        assert_eq!(
            spec.root().as_ref().unwrap().path(),
            &PathBuf::from("rootfs")
        );
        assert_eq!(spec.annotations().as_ref().unwrap()["k"], "v");
        assert!(!spec
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .is_empty());
    }
}
