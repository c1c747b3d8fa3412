//! `PUT /fs/{fs_id}`: a host directory shared with the guest over virtio-fs (zvm's own
//! endpoint; Firecracker has none).

use super::ModelError;
use serde::{Deserialize, Serialize};

/// The most bytes of a virtio-fs tag (the device's configuration space holds 36).
pub const MAX_FS_TAG: usize = 36;

/// `PUT /fs/{fs_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fs {
    /// The share's id (the same as in the path).
    pub fs_id: String,
    /// The tag the guest mounts it by (`mount -t virtiofs TAG DIR`).
    pub tag: String,
    /// The host directory; zvm starts a virtiofsd for it at `InstanceStart`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_dir: Option<String>,
    /// The guest may read but not change the share.
    #[serde(default)]
    pub read_only: bool,
    /// The guest sees and may set the files' extended attributes (file capabilities,
    /// ACLs, `user.*`): virtiofsd runs with `--xattr`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub xattr: bool,
    /// Instead of `shared_dir`: the vhost-user socket of a backend started by someone
    /// else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
}

impl Fs {
    /// Checks what the schema does not: the tag's length, and that exactly one backend
    /// is named.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |problem: &str| ModelError::InvalidFs(problem.to_string());
        if self.tag.is_empty() || self.tag.len() > MAX_FS_TAG {
            return Err(bad("tag must be 1 to 36 bytes"));
        }
        match (&self.shared_dir, &self.socket_path) {
            (Some(_), Some(_)) => Err(bad("give shared_dir or socket_path, not both")),
            (None, None) => Err(bad(
                "shared_dir (a host directory) or socket_path is required",
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fs_bodies_parse_and_validate() {
        let fs: Fs = serde_json::from_str(
            r#"{"fs_id":"data","tag":"hostdata","shared_dir":"/srv","read_only":true}"#,
        )
        .expect("parse");
        assert!(fs.read_only);
        assert!(fs.validate().is_ok());
        assert!(serde_json::from_str::<Fs>(r#"{"fs_id":"a","tag":"t","cache":"x"}"#).is_err());
        let both = Fs {
            socket_path: Some("/s".into()),
            ..fs.clone()
        };
        assert!(both.validate().is_err());
        let long = Fs {
            tag: "x".repeat(37),
            ..fs.clone()
        };
        assert!(long.validate().is_err());
        let none = Fs {
            shared_dir: None,
            ..fs
        };
        assert!(none.validate().is_err());
    }
}
