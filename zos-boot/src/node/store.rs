//! Persistence: one JSON file per deployment under `<state-dir>/deployments/`, each
//! written atomically (temporary file, fsync, rename, fsync of the directory), so a crash
//! leaves either the old or the new record, never a torn one.

use super::network;
use super::spec::WorkloadSpec;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Deployment files larger than this are refused at load (a record is a spec of at most the
/// API's 64 KiB body, its addresses and an error message).
pub const MAX_RECORD_BYTES: u64 = 1 << 20;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A record could not be encoded.
    #[error("encoding deployment `{name}`: {source}")]
    Encode {
        /// The deployment.
        name: String,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
}

/// Lifecycle state of a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentState {
    /// Accepted and persisted; the flist is being fetched or the VM started.
    Pending,
    /// The VM process runs.
    Running,
    /// The VM ended unexpectedly and will be started again after a back-off.
    Restarting,
    /// The VM ended by itself with success (the guest powered off); not restarted.
    Exited,
    /// Gave up: preparing failed, or the VM crashed too often.
    Failed,
}

/// An address handed to one interface of a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    /// The network.
    pub network: String,
    /// The guest's address.
    pub ip: Ipv4Addr,
    /// Prefix length of the network.
    pub prefix: u8,
    /// The bridge's address (the guest's gateway).
    pub gateway: Ipv4Addr,
    /// The host tap device.
    pub tap: String,
}

/// What is persisted about one deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    /// The spec as accepted.
    pub spec: WorkloadSpec,
    /// Seconds since the epoch when it was accepted.
    pub created_at: u64,
    /// Current state.
    pub state: DeploymentState,
    /// How many times the VM was started again after ending.
    pub restarts: u32,
    /// Addresses of its interfaces, in order.
    #[serde(default)]
    pub addresses: Vec<Address>,
    /// The last error (why it failed or restarted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The deployment files of a state directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Store {
    /// Opens (creating) `<state_dir>/deployments`.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let dir = state_dir.join("deployments");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(Store { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Writes `record` atomically.
    pub fn save(&self, record: &DeploymentRecord) -> Result<(), StoreError> {
        let name = &record.spec.name;
        let bytes = serde_json::to_vec_pretty(record).map_err(|source| StoreError::Encode {
            name: name.clone(),
            source,
        })?;
        let target = self.path(name);
        let tmp = self.dir.join(format!(".{name}.json.tmp"));
        let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        file.write_all(&bytes).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        drop(file);
        std::fs::rename(&tmp, &target).map_err(io(&target))?;
        self.sync_dir()
    }

    fn sync_dir(&self) -> Result<(), StoreError> {
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))
    }

    /// Deletes the record of `name` (absent is fine).
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        let path = self.path(name);
        match std::fs::remove_file(&path) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Reads every record. Unreadable or corrupt files are reported (and kept, renamed
    /// `*.corrupt`) rather than failing the whole node; leftover temporary files are removed.
    pub fn load_all(&self) -> Result<Vec<DeploymentRecord>, StoreError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let path = match entry {
                Ok(e) => e.path(),
                Err(e) => {
                    tracing::error!(dir = %self.dir.display(), "listing deployments: {e}");
                    continue;
                }
            };
            let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
                continue;
            };
            if file.starts_with('.') && file.ends_with(".tmp") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some(stem) = file.strip_suffix(".json") else {
                continue;
            };
            let parsed = read_record(&path).and_then(|b| {
                serde_json::from_slice::<DeploymentRecord>(&b).map_err(|e| e.to_string())
            });
            match parsed {
                Ok(record) if record.spec.name != stem => {
                    tracing::error!(file = %path.display(), name = %record.spec.name, "deployment file name does not match its record; ignored")
                }
                Ok(record) => match check_record(&record) {
                    Ok(()) => out.push(record),
                    Err(e) => {
                        tracing::error!(file = %path.display(), "invalid deployment record ({e}); moved aside");
                        let _ = std::fs::rename(&path, path.with_extension("corrupt"));
                    }
                },
                Err(e) => {
                    tracing::error!(file = %path.display(), "corrupt deployment record ({e}); moved aside");
                    let _ = std::fs::rename(&path, path.with_extension("corrupt"));
                }
            }
        }
        out.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        Ok(out)
    }
}

/// Reads a deployment file: a regular file (not a link, FIFO or device) of at most
/// [`MAX_RECORD_BYTES`].
fn read_record(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > MAX_RECORD_BYTES {
        return Err(format!(
            "{} bytes, more than {MAX_RECORD_BYTES}",
            meta.len()
        ));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    file.take(MAX_RECORD_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_RECORD_BYTES {
        return Err(format!("more than {MAX_RECORD_BYTES} bytes"));
    }
    Ok(bytes)
}

/// Checks a record read back from disk as its spec was checked when it was accepted (except
/// that its networks may have gone: starting it then fails on its own), and that its
/// addresses name the taps the node derives from its name: a record is trusted with paths
/// under the state directory and with host network devices to create and delete.
fn check_record(record: &DeploymentRecord) -> Result<(), String> {
    let spec = &record.spec;
    let networks: Vec<String> = spec
        .network
        .interfaces
        .iter()
        .map(|i| i.network.clone())
        .collect();
    spec.validate(&networks).map_err(|e| e.to_string())?;
    if record.addresses.len() > spec.network.interfaces.len() {
        return Err(format!(
            "{} addresses for {} interfaces",
            record.addresses.len(),
            spec.network.interfaces.len()
        ));
    }
    for (i, (addr, nic)) in record
        .addresses
        .iter()
        .zip(&spec.network.interfaces)
        .enumerate()
    {
        if addr.tap != network::tap_name(&spec.name, i) || addr.network != nic.network {
            return Err(format!(
                "address {i} names tap `{}` on network `{}`, not this deployment's",
                addr.tap, addr.network
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn record(name: &str) -> DeploymentRecord {
        let spec = WorkloadSpec::from_json(
            format!(r#"{{"name":"{name}","flist":"x.fl","compute":{{"cpu":1,"memory":"256M"}}}}"#)
                .as_bytes(),
        )
        .unwrap();
        DeploymentRecord {
            spec,
            created_at: 1,
            state: DeploymentState::Pending,
            restarts: 0,
            addresses: vec![],
            error: None,
        }
    }

    #[test]
    fn save_load_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.save(&record("b")).unwrap();
        let mut a = record("a");
        store.save(&a).unwrap();
        a.state = DeploymentState::Running;
        a.restarts = 2;
        store.save(&a).unwrap();
        let all = store.load_all().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0], a);
        store.remove("a").unwrap();
        store.remove("a").unwrap();
        assert_eq!(store.load_all().unwrap(), vec![record("b")]);
        assert!(std::fs::read_dir(dir.path().join("deployments"))
            .unwrap()
            .all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".tmp")));
    }

    #[test]
    fn corrupt_and_temporary_files_do_not_stop_loading() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.save(&record("good")).unwrap();
        let d = dir.path().join("deployments");
        std::fs::write(d.join("bad.json"), b"{ torn").unwrap();
        std::fs::write(d.join(".x.json.tmp"), b"half").unwrap();
        let mut other = record("other");
        other.spec.name = "mismatch".into();
        std::fs::write(d.join("other.json"), serde_json::to_vec(&other).unwrap()).unwrap();
        assert_eq!(store.load_all().unwrap(), vec![record("good")]);
        assert!(d.join("bad.corrupt").exists());
        assert!(!d.join(".x.json.tmp").exists());
    }
}
