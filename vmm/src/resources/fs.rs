//! virtio-fs shares of [`VmResources`] (`fs` in config files, `PUT /fs/{id}` in the API)
//! and their validation.

use super::{ResourcesError, VmResources};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The most virtio-fs shares one VM gets.
pub const MAX_FS: usize = 8;

/// A host directory shared with the guest over virtio-fs, served by a vhost-user backend
/// (virtiofsd). The guest mounts it with `mount -t virtiofs TAG DIR`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// Unique name of the share.
    pub fs_id: String,
    /// The tag the guest mounts it by: 1 to 36 bytes.
    pub tag: String,
    /// The host directory; zvm starts a virtiofsd for it (unless `socket_path` names a
    /// backend someone else started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_dir: Option<PathBuf>,
    /// The guest may read the share but not change it.
    #[serde(default)]
    pub read_only: bool,
    /// The guest sees and may set the files' extended attributes (virtiofsd's `--xattr`):
    /// file capabilities (`security.capability`), ACLs, `user.*`. Off: none are visible.
    #[serde(default, skip_serializing_if = "super::is_false")]
    pub xattr: bool,
    /// The vhost-user socket of the backend: one started outside zvm, or (filled in by
    /// zvm) the one it started for `shared_dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<PathBuf>,
}

impl VmResources {
    pub(super) fn validate_fs(&self) -> Result<(), ResourcesError> {
        if self.fs.len() > MAX_FS {
            return Err(ResourcesError::BadFs {
                id: String::new(),
                problem: format!("{} shares; at most {MAX_FS} are allowed", self.fs.len()),
            });
        }
        for (i, fs) in self.fs.iter().enumerate() {
            let bad = |problem: String| ResourcesError::BadFs {
                id: fs.fs_id.clone(),
                problem,
            };
            let id_ok = !fs.fs_id.is_empty()
                && fs.fs_id.len() <= 64
                && fs
                    .fs_id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !id_ok {
                return Err(bad(
                    "its id must be 1 to 64 letters, digits, '_' or '-'".into()
                ));
            }
            if fs.tag.is_empty() || fs.tag.len() > crate::devices::virtio::fs::TAG_LEN {
                return Err(bad(format!("tag '{}' must be 1 to 36 bytes", fs.tag)));
            }
            if fs.tag.chars().any(|c| c.is_control() || c == ',') {
                return Err(bad(format!(
                    "tag '{}' has a control character or ','",
                    fs.tag
                )));
            }
            if self.fs[..i].iter().any(|other| other.fs_id == fs.fs_id) {
                return Err(bad("another share has this id".into()));
            }
            if self.fs[..i].iter().any(|other| other.tag == fs.tag) {
                return Err(bad(format!("another share has the tag '{}'", fs.tag)));
            }
            match (&fs.shared_dir, &fs.socket_path) {
                (None, None) => {
                    return Err(bad(
                        "it needs shared_dir (a host directory) or socket_path (a backend)".into(),
                    ))
                }
                (Some(dir), _) if !dir.is_dir() => {
                    return Err(bad(format!(
                        "shared_dir {} is not a directory",
                        dir.display()
                    )))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(id: &str, tag: &str) -> FsConfig {
        FsConfig {
            fs_id: id.into(),
            tag: tag.into(),
            shared_dir: Some(std::env::temp_dir()),
            read_only: false,
            xattr: false,
            socket_path: None,
        }
    }

    #[test]
    fn shares_are_parsed_and_validated() {
        let json = r#"{"boot-source":{"kernel_image_path":"/k"},
            "fs":[{"fs_id":"data","tag":"hostdata","shared_dir":"/tmp","read_only":true}]}"#;
        let parsed: VmResources = serde_json::from_str(json).expect("parse");
        assert_eq!(parsed.fs.len(), 1);
        assert!(parsed.fs[0].read_only);
        assert!(parsed.validate_fs().is_ok());
        let unknown =
            r#"{"boot-source":{"kernel_image_path":"/k"},"fs":[{"fs_id":"a","tag":"t","x":1}]}"#;
        assert!(serde_json::from_str::<VmResources>(unknown).is_err());
        let without: VmResources =
            serde_json::from_str(r#"{"boot-source":{"kernel_image_path":"/k"}}"#).expect("parse");
        assert!(
            without.fs.is_empty(),
            "old config files and snapshots have no fs"
        );

        let mut r = VmResources::new("/k");
        r.fs = vec![share("a", "t1"), share("b", "t1")];
        assert!(matches!(r.validate_fs(), Err(ResourcesError::BadFs { .. })));
        r.fs = vec![share("a", "t1"), share("a", "t2")];
        assert!(r.validate_fs().is_err());
        r.fs = vec![share("a", &"x".repeat(37))];
        assert!(r.validate_fs().is_err());
        r.fs = vec![share("a b", "t")];
        assert!(r.validate_fs().is_err());
        let mut no_backend = share("a", "t");
        no_backend.shared_dir = None;
        r.fs = vec![no_backend.clone()];
        assert!(r.validate_fs().is_err());
        no_backend.socket_path = Some("/run/fs.sock".into());
        r.fs = vec![no_backend];
        assert!(r.validate_fs().is_ok());
        let mut not_dir = share("a", "t");
        not_dir.shared_dir = Some("/nonexistent/zvm-share".into());
        r.fs = vec![not_dir];
        assert!(r.validate_fs().is_err());
    }
}
