//! The node's state: deployments in memory and on disk, admission (validation, capacity,
//! addresses), and the supervisor task of each deployment.

use super::capacity::{self, Amounts, Capacity};
use super::network::{self, NetworkDef};
use super::restart::RestartLimits;
use super::runner::{VmPaths, WorkloadRunner};
use super::spec::{SpecError, WorkloadSpec};
use super::store::{Address, DeploymentRecord, DeploymentState, Store, StoreError};
use super::supervisor;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Errors of node operations; each maps to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The spec is invalid (400).
    #[error("invalid deployment: {0}")]
    Invalid(#[from] SpecError),
    /// The flist cannot be had (400).
    #[error("invalid deployment: {0}")]
    Unreachable(String),
    /// A deployment of that name exists (409).
    #[error("a deployment named `{0}` already exists")]
    Exists(String),
    /// Not enough memory (409).
    #[error("not enough memory: `{name}` needs {needed_mib} MiB but only {free_mib} MiB of the node's {offered_mib} MiB are free")]
    Overcommit {
        /// The deployment.
        name: String,
        /// What it asks.
        needed_mib: u64,
        /// What is left.
        free_mib: u64,
        /// What the node offers in all (total minus reserved).
        offered_mib: u64,
    },
    /// Not enough disk for the deployment's stores and disks, reserved in full (409).
    #[error("not enough disk: `{name}` takes up to {needed_mib} MiB (root store, volumes, disks) but only {free_mib} MiB of the node's {total_mib} MiB are not promised to deployments")]
    DiskOvercommit {
        /// The deployment.
        name: String,
        /// What its stores and disks may take.
        needed_mib: u64,
        /// What is left.
        free_mib: u64,
        /// The state directory's file system.
        total_mib: u64,
    },
    /// An address cannot be given (409, or 400 when out of range).
    #[error("network: {0}")]
    Network(#[from] network::NetError),
    /// No such deployment (404).
    #[error("no deployment named `{0}`")]
    NotFound(String),
    /// Persisting failed (500).
    #[error("state store: {0}")]
    Store(#[from] StoreError),
}

/// How a node is set up.
#[derive(Clone)]
pub struct NodeConfig {
    /// The node's id (the node image's identity), if it has one.
    pub node_id: Option<String>,
    /// Where deployments, their files and the cache live.
    pub state_dir: PathBuf,
    /// Runs the VMs.
    pub runner: Arc<dyn WorkloadRunner>,
    /// Networks the node serves.
    pub networks: Vec<NetworkDef>,
    /// Host memory in bytes (probed when `None`).
    pub memory_total: Option<u64>,
    /// Memory kept for the node in bytes (a default share when `None`).
    pub memory_reserved: Option<u64>,
    /// The restart policy.
    pub restart: RestartLimits,
    /// How long a VM gets between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
}

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfig")
            .field("state_dir", &self.state_dir)
            .field("networks", &self.networks)
            .finish_non_exhaustive()
    }
}

pub(super) struct Entry {
    pub(super) record: DeploymentRecord,
    pub(super) pid: Option<u32>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

pub(super) struct Inner {
    pub(super) cfg: NodeConfig,
    store: Store,
    deployments: Mutex<BTreeMap<String, Entry>>,
}

/// A deployment as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeploymentView {
    /// Its name.
    pub name: String,
    /// Its state.
    pub state: DeploymentState,
    /// Restarts so far.
    pub restarts: u32,
    /// The first interface's address.
    pub ip: Option<Ipv4Addr>,
    /// All addresses.
    pub addresses: Vec<Address>,
    /// The VM process, while it runs.
    pub pid: Option<u32>,
    /// The last error.
    pub error: Option<String>,
    /// Seconds since the epoch when it was accepted.
    pub created_at: u64,
    /// The end of the console log (in `GET /deployments/{name}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub console_tail: Option<String>,
    /// The spec.
    pub spec: WorkloadSpec,
}

/// How much of the console log `GET /deployments/{name}` shows.
pub const CONSOLE_TAIL_BYTES: u64 = 8192;

/// The node: cheap to clone, shared by the API handlers and the supervisors.
#[derive(Clone)]
pub struct Node {
    pub(super) inner: Arc<Inner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("state_dir", &self.inner.cfg.state_dir)
            .finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Node {
    /// Opens the state directory and reconciles every persisted deployment: a VM still
    /// running is re-adopted, one that is gone is started again; failed and exited ones are
    /// kept as they are. Must be called inside a tokio runtime.
    pub fn start(cfg: NodeConfig) -> Result<Node, NodeError> {
        std::fs::create_dir_all(cfg.state_dir.join("vms")).map_err(|source| StoreError::Io {
            path: cfg.state_dir.join("vms"),
            source,
        })?;
        let store = Store::open(&cfg.state_dir)?;
        let records = store.load_all()?;
        let node = Node {
            inner: Arc::new(Inner {
                cfg,
                store,
                deployments: Mutex::new(BTreeMap::new()),
            }),
        };
        for mut record in records {
            let name = record.spec.name.clone();
            let active = !matches!(
                record.state,
                DeploymentState::Failed | DeploymentState::Exited
            );
            if active {
                // Running again only once adopted or restarted.
                record.state = DeploymentState::Pending;
            }
            tracing::info!(deployment = %name, state = ?record.state, "reconciling");
            node.insert(record, active);
        }
        Ok(node)
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        self.inner
            .deployments
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Adds an entry and, when `run`, its supervisor.
    fn insert(&self, record: DeploymentRecord, run: bool) {
        let name = record.spec.name.clone();
        let (stop, stop_rx) = watch::channel(false);
        self.lock().insert(
            name.clone(),
            Entry {
                record,
                pid: None,
                stop,
                task: None,
            },
        );
        if run {
            let task = tokio::spawn(supervisor::supervise(self.clone(), name.clone(), stop_rx));
            if let Some(e) = self.lock().get_mut(&name) {
                e.task = Some(task);
            }
        }
    }

    /// The files of deployment `name`.
    pub fn paths(&self, name: &str) -> VmPaths {
        VmPaths::new(&self.inner.cfg.state_dir, name)
    }

    /// Changes a deployment's record and persists it; `false` if it is gone.
    pub(super) fn update(
        &self,
        name: &str,
        f: impl FnOnce(&mut DeploymentRecord, &mut Option<u32>),
    ) -> bool {
        let mut map = self.lock();
        let Some(entry) = map.get_mut(name) else {
            return false;
        };
        f(&mut entry.record, &mut entry.pid);
        if let Err(e) = self.inner.store.save(&entry.record) {
            tracing::error!(deployment = %name, "cannot persist: {e}");
        }
        true
    }

    /// A copy of a deployment's record.
    pub(super) fn record(&self, name: &str) -> Option<DeploymentRecord> {
        self.lock().get(name).map(|e| e.record.clone())
    }

    /// Validates, admits and persists a deployment, then starts it in the background.
    pub async fn create(&self, body: &[u8]) -> Result<DeploymentView, NodeError> {
        let spec = WorkloadSpec::from_json(body)?;
        let networks: Vec<String> = self
            .inner
            .cfg
            .networks
            .iter()
            .map(|n| n.name.clone())
            .collect();
        spec.validate(&networks)?;
        if self.lock().contains_key(&spec.name) {
            return Err(NodeError::Exists(spec.name));
        }
        let runner = self.inner.cfg.runner.clone();
        let flist = spec.flist.clone();
        tokio::task::spawn_blocking(move || runner.check_flist(&flist))
            .await
            .map_err(|e| NodeError::Unreachable(e.to_string()))?
            .map_err(|e| NodeError::Unreachable(format!("flist: {e}")))?;
        let (total_mem, reserved_mem) = self.memory_limits();
        let map = self.lock();
        if map.contains_key(&spec.name) {
            return Err(NodeError::Exists(spec.name));
        }
        // Used memory is summed under the same lock the new entry is inserted with, so
        // concurrent requests cannot overcommit together.
        let offered = total_mem.saturating_sub(reserved_mem);
        let free = offered.saturating_sub(used(&map).memory);
        let needed = spec.compute.memory.0;
        if needed > free {
            return Err(NodeError::Overcommit {
                name: spec.name,
                needed_mib: needed >> 20,
                free_mib: free >> 20,
                offered_mib: offered >> 20,
            });
        }
        // Stores and disks are sparse, but each may fill up to its size: together they
        // never promise more than the node's disk (unknown: not checked).
        let disk_total = capacity::disk_total(&self.inner.cfg.state_dir);
        let disk_free = disk_total.saturating_sub(used(&map).disk);
        let disk_needed = spec.disk_bytes();
        if disk_total > 0 && disk_needed > disk_free {
            return Err(NodeError::DiskOvercommit {
                name: spec.name,
                needed_mib: disk_needed >> 20,
                free_mib: disk_free >> 20,
                total_mib: disk_total >> 20,
            });
        }
        let mut addresses = Vec::new();
        for (i, nic) in spec.network.interfaces.iter().enumerate() {
            let Some(net) = self
                .inner
                .cfg
                .networks
                .iter()
                .find(|n| n.name == nic.network)
            else {
                continue;
            };
            let taken: Vec<Ipv4Addr> = map
                .values()
                .flat_map(|e| e.record.addresses.iter())
                .chain(addresses.iter())
                .filter(|a: &&Address| a.network == net.name)
                .map(|a| a.ip)
                .collect();
            let ip = net.allocate(nic.ip, &taken)?;
            addresses.push(Address {
                network: net.name.clone(),
                ip,
                prefix: net.prefix,
                gateway: net.gateway(),
                tap: network::tap_name(&spec.name, i),
            });
        }
        let record = DeploymentRecord {
            spec,
            created_at: now_secs(),
            state: DeploymentState::Pending,
            restarts: 0,
            addresses,
            error: None,
        };
        self.inner.store.save(&record)?;
        let name = record.spec.name.clone();
        drop(map);
        tracing::info!(deployment = %name, "accepted");
        self.insert(record, true);
        self.view(&name, false).ok_or(NodeError::NotFound(name))
    }

    fn view_of(&self, entry: &Entry, console: bool) -> DeploymentView {
        let r = &entry.record;
        DeploymentView {
            name: r.spec.name.clone(),
            state: r.state,
            restarts: r.restarts,
            ip: r.addresses.first().map(|a| a.ip),
            addresses: r.addresses.clone(),
            pid: entry.pid,
            error: r.error.clone(),
            created_at: r.created_at,
            console_tail: console.then(|| console_tail(&self.paths(&r.spec.name).console)),
            spec: r.spec.clone(),
        }
    }

    /// One deployment (with its console tail when `console`).
    pub fn view(&self, name: &str, console: bool) -> Option<DeploymentView> {
        let map = self.lock();
        map.get(name).map(|e| self.view_of(e, console))
    }

    /// All deployments, by name.
    pub fn list(&self) -> Vec<DeploymentView> {
        let map = self.lock();
        map.values().map(|e| self.view_of(e, false)).collect()
    }

    /// Stops a deployment's VM, then removes its record, files and disks.
    pub async fn delete(&self, name: &str) -> Result<(), NodeError> {
        let entry = self
            .lock()
            .remove(name)
            .ok_or_else(|| NodeError::NotFound(name.to_string()))?;
        let _ = entry.stop.send(true);
        if let Some(task) = entry.task {
            let _ = task.await;
        }
        let paths = self.paths(name);
        let runner = self.inner.cfg.runner.clone();
        let record = entry.record.clone();
        self.inner.store.remove(name)?;
        let _ = tokio::task::spawn_blocking(move || {
            runner.cleanup(&record, &paths);
            if let Err(e) = std::fs::remove_dir_all(&paths.dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(dir = %paths.dir.display(), "cannot remove: {e}");
                }
            }
        })
        .await;
        tracing::info!(deployment = %name, "deleted");
        Ok(())
    }

    /// Stops supervising without touching the VMs (daemon shutdown: they keep running and
    /// the next daemon re-adopts them).
    pub fn detach(&self) {
        for entry in self.lock().values_mut() {
            if let Some(task) = entry.task.take() {
                task.abort();
            }
        }
    }

    /// Host memory and the node's reserve, in bytes.
    fn memory_limits(&self) -> (u64, u64) {
        let cfg = &self.inner.cfg;
        let total_mem = cfg.memory_total.unwrap_or_else(capacity::host_memory);
        let reserved_mem = cfg
            .memory_reserved
            .unwrap_or_else(|| capacity::default_reserved_memory(total_mem));
        (total_mem, reserved_mem)
    }

    /// Total, reserved and used resources, and /dev/kvm.
    pub fn capacity(&self) -> Capacity {
        let cfg = &self.inner.cfg;
        let (total_mem, reserved_mem) = self.memory_limits();
        let used = used(&self.lock());
        Capacity {
            total: Amounts {
                cpu: capacity::host_cpus(),
                memory: total_mem,
                disk: capacity::disk_total(&cfg.state_dir),
            },
            reserved: Amounts {
                cpu: 0,
                memory: reserved_mem,
                disk: 0,
            },
            used,
            kvm: capacity::kvm_status(),
        }
    }

    /// The node's id, if it has one.
    pub fn node_id(&self) -> Option<&str> {
        self.inner.cfg.node_id.as_deref()
    }

    /// Number of deployments.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether there are no deployments.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the deployments take: memory and vCPUs of those not failed or exited, disk of all.
fn used(map: &BTreeMap<String, Entry>) -> Amounts {
    let mut used = Amounts::default();
    for e in map.values() {
        if !matches!(
            e.record.state,
            DeploymentState::Failed | DeploymentState::Exited
        ) {
            used.cpu += u64::from(e.record.spec.compute.cpu);
            used.memory += e.record.spec.compute.memory.0;
        }
        used.disk += e.record.spec.disk_bytes();
    }
    used
}

/// The last [`CONSOLE_TAIL_BYTES`] of a console log, lossily decoded.
pub fn console_tail(path: &std::path::Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(CONSOLE_TAIL_BYTES)));
    let mut buf = Vec::new();
    let _ = f.take(CONSOLE_TAIL_BYTES).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}
