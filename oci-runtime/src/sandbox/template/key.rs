//! What a template is keyed by: everything that shapes the VM it snapshots.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The inputs a template depends on; two VMs with equal keys boot into the same state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateKey {
    /// The guest kernel: path, size, modification time and inode.
    pub kernel: String,
    /// The static guest agent: path, size, modification time and inode.
    pub agent: String,
    /// vCPUs.
    pub vcpus: u8,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// The kernel command line.
    pub boot_args: String,
    /// This program's version and the snapshot format it writes.
    pub zvm: String,
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

impl TemplateKey {
    /// The key of a container VM of `vcpus` and `memory_mib` booting `kernel` with the
    /// agent `agent` and command line `boot_args`.
    pub fn new(
        kernel: &Path,
        agent: &Path,
        vcpus: u8,
        memory_mib: u64,
        boot_args: &str,
    ) -> std::io::Result<TemplateKey> {
        Ok(TemplateKey {
            kernel: file_stamp(kernel)?,
            agent: file_stamp(agent)?,
            vcpus,
            memory_mib,
            boot_args: boot_args.to_string(),
            zvm: format!(
                "{} snapshot-format {}",
                env!("CARGO_PKG_VERSION"),
                vmm::snapshot::file::FORMAT_VERSION
            ),
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
        let base = TemplateKey::new(&k, &a, 1, 256, "console=ttyS0").unwrap();
        assert!(base.id().starts_with("1cpu-256mib-"), "{}", base.id());
        assert_eq!(
            base.id(),
            TemplateKey::new(&k, &a, 1, 256, "console=ttyS0")
                .unwrap()
                .id()
        );
        let other = |key: TemplateKey| assert_ne!(key.id(), base.id());
        other(TemplateKey::new(&k, &a, 2, 256, "console=ttyS0").unwrap());
        other(TemplateKey::new(&k, &a, 1, 512, "console=ttyS0").unwrap());
        other(TemplateKey::new(&k, &a, 1, 256, "quiet").unwrap());
        std::fs::write(&a, b"a new agent").unwrap();
        other(TemplateKey::new(&k, &a, 1, 256, "console=ttyS0").unwrap());
        assert!(TemplateKey::new(&dir.path().join("none"), &a, 1, 256, "").is_err());
    }
}
