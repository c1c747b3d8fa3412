//! The defaults a container flist's image brings: `/.zvm/image-config.json`, written by
//! `zvm flist from-oci` (or an image's own config), read leniently.

use flist_fetcher::tree::Tree;
use std::path::Path;

/// Defaults a container image brings (`/.zvm/image-config.json`, written by
/// `zvm flist from-oci`): its command and environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct ImageConfig {
    pub(super) argv: Vec<String>,
    pub(super) env: Vec<(String, String)>,
    pub(super) cwd: Option<String>,
    /// User and group ids (root when the image says nothing).
    pub(super) user: (u32, u32),
}

pub(super) fn image_config(
    tree: &Tree,
    fl: &Path,
    work_dir: &Path,
    unpack: &flist_fetcher::UnpackOptions,
) -> ImageConfig {
    if !tree
        .entries
        .iter()
        .any(|e| e.path == Path::new(".zvm/image-config.json"))
    {
        return ImageConfig::default();
    }
    let dir = work_dir.join("image-config");
    let _ = std::fs::remove_dir_all(&dir);
    let text = flist_fetcher::unpack(fl, &dir, unpack)
        .ok()
        .and_then(|_| std::fs::read(dir.join(".zvm/image-config.json")).ok());
    let _ = std::fs::remove_dir_all(&dir);
    text.map(|t| parse_image_config(&t)).unwrap_or_default()
}

/// Reads an OCI-style image config leniently: `Entrypoint` + `Cmd` and `Env` at the top
/// level or under `config` (either case).
fn parse_image_config(bytes: &[u8]) -> ImageConfig {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return ImageConfig::default();
    };
    // `zvm flist from-oci` writes {"process": {"args", "env", "cwd", ...}, ...}; an image's
    // own config ({"config": {"Entrypoint", "Cmd", "Env", "WorkingDir"}}) is read too.
    let cfg = value
        .get("process")
        .or_else(|| value.get("config"))
        .or_else(|| value.get("Config"))
        .unwrap_or(&value);
    let list = |names: &[&str]| -> Vec<String> {
        names
            .iter()
            .find_map(|n| cfg.get(*n))
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut argv = list(&["args"]);
    if argv.is_empty() {
        argv = list(&["Entrypoint", "entrypoint"]);
        argv.extend(list(&["Cmd", "cmd"]));
    }
    let env = list(&["env", "Env"])
        .into_iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let cwd = ["cwd", "WorkingDir", "workingDir"]
        .iter()
        .find_map(|n| cfg.get(*n))
        .and_then(|v| v.as_str())
        .filter(|s| s.starts_with('/'))
        .map(str::to_string);
    let id = |name: &str| {
        cfg.get(name)
            .and_then(|v| v.as_u64())
            .and_then(|v| u32::try_from(v).ok())
    };
    let user = (id("uid").unwrap_or(0), id("gid").unwrap_or(0));
    ImageConfig {
        argv,
        env,
        cwd,
        user,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn image_config_is_read_leniently() {
        let c = parse_image_config(
            br#"{"config":{"Entrypoint":["/bin/app"],"Cmd":["--x"],"Env":["PATH=/bin","A=b=c"]}}"#,
        );
        assert_eq!(c.argv, ["/bin/app", "--x"]);
        assert_eq!(
            c.env,
            [
                ("PATH".to_string(), "/bin".to_string()),
                ("A".to_string(), "b=c".to_string())
            ]
        );
        assert_eq!(parse_image_config(b"not json"), ImageConfig::default());
        let z = parse_image_config(br#"{"schema":1,"process":{"args":["/bin/app","-v"],"env":["PATH=/bin"],"cwd":"/srv","uid":0}}"#);
        assert_eq!(z.argv, ["/bin/app", "-v"]);
        assert_eq!(z.env, [("PATH".to_string(), "/bin".to_string())]);
        assert_eq!(z.cwd.as_deref(), Some("/srv"));
        assert_eq!(z.user, (0, 0));
        let u = parse_image_config(br#"{"process":{"args":["a"],"uid":1000,"gid":100}}"#);
        assert_eq!(u.user, (1000, 100));
        assert_eq!(parse_image_config(br#"{"cmd":["sh"]}"#).argv, ["sh"]);
    }
}
