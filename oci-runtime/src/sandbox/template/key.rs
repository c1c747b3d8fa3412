//! What a template is keyed by: everything that shapes the VM it snapshots.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The inputs a template depends on; two VMs with equal keys boot into the same state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateKey {
    /// The guest kernel's SHA-256.
    pub kernel: String,
    /// The static guest agent's SHA-256.
    pub agent: String,
    /// vCPUs.
    pub vcpus: u8,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// The kernel command line.
    pub boot_args: String,
    /// This program's version and the snapshot format it writes.
    pub zvm: String,
    /// The tag of the virtio-fs share the VM has (unused in the template; each clone's
    /// own virtiofsd serves it), for containers with host bind mounts or their root over
    /// virtio-fs; `None`: no share (and the key, and so the id, of templates before
    /// shares existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<String>,
    /// Network interfaces the VM has (on the template's own taps; each clone's are its
    /// own); 0 (and the key, and so the id, of templates before interfaces) without.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub nics: u8,
    /// Data disks after the agent's and the container's (empty placeholders in the
    /// template); 0 (and the key of templates before data disks) without.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub data_disks: u8,
}

fn is_zero(n: &u8) -> bool {
    *n == 0
}

/// Identifies a file by where it is and what it looks like on disk: replacing it changes
/// its size, modification time or inode.
pub(crate) fn file_stamp(path: &Path) -> std::io::Result<String> {
    let meta = std::fs::metadata(path)?;
    Ok(format!(
        "{} {} {}.{:09} {}",
        path.display(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ino()
    ))
}

/// Content digests of files, remembered by [`file_stamp`] in `<dir>/digests.json` so that
/// a file is read again only when it changed (a copy of the same kernel or agent, with a
/// new modification time, gives the same digest and so the same template).
#[derive(Debug, Clone)]
pub struct Digests {
    path: Option<std::path::PathBuf>,
}

/// Digests remembered at most (the oldest entries go first).
const DIGESTS_KEPT: usize = 64;

impl Digests {
    /// Digests remembered in `dir` (nothing remembered with None).
    pub fn in_dir(dir: Option<&Path>) -> Digests {
        Digests {
            path: dir.map(|d| d.join("digests.json")),
        }
    }

    fn load(&self) -> Vec<(String, String)> {
        self.path
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|t| serde_json::from_slice(&t).ok())
            .unwrap_or_default()
    }

    /// The SHA-256 of `path`'s content, in hex.
    pub fn digest(&self, path: &Path) -> std::io::Result<String> {
        let stamp = file_stamp(path)?;
        let mut known = self.load();
        if let Some((_, digest)) = known.iter().find(|(s, _)| *s == stamp) {
            return Ok(digest.clone());
        }
        let mut file = std::fs::File::open(path)?;
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher)?;
        let digest: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if let Some(p) = &self.path {
            known.push((stamp, digest.clone()));
            let excess = known.len().saturating_sub(DIGESTS_KEPT);
            known.drain(..excess);
            // Written whole and renamed: a reader never sees half a file; a lost update
            // only costs reading the file again.
            // A temporary name of its own: jailed sandboxes all have pid 1.
            if let Some(dir) = p.parent() {
                let _ = std::fs::create_dir_all(dir);
                if let (Ok(json), Ok(mut tmp)) = (
                    serde_json::to_vec(&known),
                    tempfile::NamedTempFile::new_in(dir),
                ) {
                    if std::io::Write::write_all(&mut tmp, &json).is_ok() {
                        let _ = tmp.persist(p);
                    }
                }
            }
        }
        Ok(digest)
    }
}

impl TemplateKey {
    /// The key of a container VM of `vcpus` and `memory_mib` booting `kernel` with the
    /// agent `agent` and command line `boot_args` (file digests through `digests`).
    pub fn new(
        digests: &Digests,
        kernel: &Path,
        agent: &Path,
        vcpus: u8,
        memory_mib: u64,
        boot_args: &str,
    ) -> std::io::Result<TemplateKey> {
        Ok(TemplateKey {
            kernel: digests.digest(kernel)?,
            agent: digests.digest(agent)?,
            vcpus,
            memory_mib,
            boot_args: boot_args.to_string(),
            zvm: format!(
                "{} snapshot-format {}",
                env!("CARGO_PKG_VERSION"),
                vmm::snapshot::file::FORMAT_VERSION
            ),
            share: None,
            nics: 0,
            data_disks: 0,
        })
    }

    /// The template's directory name: a digest of the key, prefixed with its size so a
    /// listing says what each one is.
    pub fn id(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        let digest = Sha256::digest(&json);
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("{}cpu-{}mib-{hex}", self.vcpus, self.memory_mib)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_id_changes_with_every_input() {
        let dir = tempfile::tempdir().unwrap();
        let (k, a) = (dir.path().join("vmlinux"), dir.path().join("agent"));
        std::fs::write(&k, b"kernel").unwrap();
        std::fs::write(&a, b"agent").unwrap();
        let digests = Digests::in_dir(Some(&dir.path().join("cache")));
        let key = |k: &Path, a: &Path, vcpus, mem, args| {
            TemplateKey::new(&digests, k, a, vcpus, mem, args)
        };
        let base = key(&k, &a, 1, 256, "console=ttyS0").unwrap();
        assert!(base.id().starts_with("1cpu-256mib-"), "{}", base.id());
        assert_eq!(
            base.id(),
            key(&k, &a, 1, 256, "console=ttyS0").unwrap().id()
        );
        // A copy of the same files (new path, new time) is the same template.
        let (k2, a2) = (dir.path().join("vmlinux2"), dir.path().join("agent2"));
        std::fs::copy(&k, &k2).unwrap();
        std::fs::copy(&a, &a2).unwrap();
        assert_eq!(
            base.id(),
            key(&k2, &a2, 1, 256, "console=ttyS0").unwrap().id()
        );
        assert!(dir.path().join("cache/digests.json").is_file());
        let other = |changed: TemplateKey| assert_ne!(changed.id(), base.id());
        other(key(&k, &a, 2, 256, "console=ttyS0").unwrap());
        other(key(&k, &a, 1, 512, "console=ttyS0").unwrap());
        other(key(&k, &a, 1, 256, "quiet").unwrap());
        other(TemplateKey {
            share: Some("zvm-share".into()),
            ..base.clone()
        });
        other(TemplateKey {
            nics: 1,
            ..base.clone()
        });
        other(TemplateKey {
            data_disks: 1,
            ..base.clone()
        });
        // Keys without interfaces or data disks are those of templates made before either
        // existed: the same ids, the same templates.
        let json = serde_json::to_string(&base).unwrap();
        assert!(
            !json.contains("nics") && !json.contains("data_disks"),
            "{json}"
        );
        std::fs::write(&a, b"a new agent").unwrap();
        other(key(&k, &a, 1, 256, "console=ttyS0").unwrap());
        std::fs::write(&k2, b"another kernel").unwrap();
        other(key(&k2, &a2, 1, 256, "console=ttyS0").unwrap());
        assert!(key(&dir.path().join("none"), &a, 1, 256, "").is_err());
        // Without a cache directory the digest is read every time, the same.
        let uncached = Digests::in_dir(None);
        assert_eq!(uncached.digest(&a2).unwrap(), digests.digest(&a2).unwrap());
    }
}
