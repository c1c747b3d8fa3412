//! Fast tests of the node with a test-double runner: admission, persistence and
//! reconciliation, the restart policy, deletion, and the HTTP API.

use super::api;
use super::core::{Node, NodeConfig, NodeError};
use super::network::NetworkDef;
use super::restart::RestartLimits;
use super::runner::{BoxFuture, VmExit, VmInstance, VmPaths, WorkloadRunner};
use super::store::{DeploymentRecord, DeploymentState};
use crate::bytesize::MIB;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// VMs of the test double: they live as long as this world (not the node), like real VM
/// processes outlive a killed daemon. Behaviour comes from the flist: `fake://run` runs
/// until stopped, `fake://crash` fails at once, `fake://exit` powers off at once,
/// `fake://unreachable` is refused, `fake://prepare-fails` fails to prepare.
#[derive(Default)]
struct World {
    vms: Mutex<HashMap<String, watch::Sender<Option<VmExit>>>>,
    starts: Mutex<HashMap<String, usize>>,
    cleaned: Mutex<Vec<String>>,
}

impl World {
    fn starts(&self, name: &str) -> usize {
        self.starts.lock().unwrap().get(name).copied().unwrap_or(0)
    }
    fn running(&self, name: &str) -> bool {
        self.vms
            .lock()
            .unwrap()
            .get(name)
            .is_some_and(|tx| tx.borrow().is_none())
    }
    /// The VM dies behind the node's back (e.g. while the daemon is down).
    fn kill(&self, name: &str) {
        if let Some(tx) = self.vms.lock().unwrap().remove(name) {
            let _ = tx.send(Some(VmExit::Failure("killed".into())));
        }
    }
}

struct FakeRunner(Arc<World>);

struct FakeVm {
    rx: watch::Receiver<Option<VmExit>>,
    name: String,
    world: Arc<World>,
}

impl VmInstance for FakeVm {
    fn pid(&self) -> Option<u32> {
        Some(4242)
    }
    fn wait(&mut self) -> BoxFuture<'_, VmExit> {
        Box::pin(async move {
            match self.rx.wait_for(|v| v.is_some()).await {
                Ok(v) => v.clone().unwrap_or(VmExit::Success),
                Err(_) => VmExit::Failure("world ended".into()),
            }
        })
    }
    fn stop(&mut self, _grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move { self.world.kill(&self.name) })
    }
}

impl WorkloadRunner for FakeRunner {
    fn check_flist(&self, flist: &str) -> Result<(), String> {
        if flist == "fake://unreachable" {
            Err(format!(
                "flist `{flist}` is not reachable: connection refused"
            ))
        } else {
            Ok(())
        }
    }
    fn prepare(&self, record: &DeploymentRecord, paths: &VmPaths) -> Result<(), String> {
        std::fs::create_dir_all(&paths.work).map_err(|e| e.to_string())?;
        if record.spec.flist == "fake://prepare-fails" {
            return Err("flist has no entrypoint".into());
        }
        Ok(())
    }
    fn start(
        &self,
        record: &DeploymentRecord,
        paths: &VmPaths,
    ) -> Result<Box<dyn VmInstance>, String> {
        let name = record.spec.name.clone();
        *self
            .0
            .starts
            .lock()
            .unwrap()
            .entry(name.clone())
            .or_default() += 1;
        std::fs::write(
            &paths.console,
            format!("booting {name}\nhello from {name}\n"),
        )
        .map_err(|e| e.to_string())?;
        let exit = match record.spec.flist.as_str() {
            "fake://crash" => Some(VmExit::Failure("exit code 1".into())),
            "fake://exit" => Some(VmExit::Success),
            _ => None,
        };
        let (tx, rx) = watch::channel(exit);
        self.0.vms.lock().unwrap().insert(name.clone(), tx);
        Ok(Box::new(FakeVm {
            rx,
            name,
            world: self.0.clone(),
        }))
    }
    fn adopt(&self, record: &DeploymentRecord, _paths: &VmPaths) -> Option<Box<dyn VmInstance>> {
        let name = record.spec.name.clone();
        let vms = self.0.vms.lock().unwrap();
        let tx = vms.get(&name).filter(|tx| tx.borrow().is_none())?;
        Some(Box::new(FakeVm {
            rx: tx.subscribe(),
            name,
            world: self.0.clone(),
        }))
    }
    fn cleanup(&self, record: &DeploymentRecord, _paths: &VmPaths) {
        self.0
            .cleaned
            .lock()
            .unwrap()
            .push(record.spec.name.clone());
    }
}

fn config(dir: &Path, world: &Arc<World>) -> NodeConfig {
    NodeConfig {
        node_id: Some("ab12".into()),
        state_dir: dir.to_path_buf(),
        runner: Arc::new(FakeRunner(world.clone())),
        networks: vec![NetworkDef::parse("lan=10.9.0.0/24").unwrap()],
        memory_total: Some(2048 * MIB),
        memory_reserved: Some(512 * MIB),
        restart: RestartLimits {
            backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            ..RestartLimits::default()
        },
        stop_grace: Duration::from_millis(50),
    }
}

fn spec(name: &str, flist: &str, memory: &str) -> String {
    format!(r#"{{"name":"{name}","flist":"{flist}","compute":{{"cpu":1,"memory":"{memory}"}}}}"#)
}

/// Waits (with a generous limit against hangs, not as an assertion on speed) until the
/// deployment reaches `state`.
async fn wait_state(node: &Node, name: &str, state: DeploymentState) {
    for _ in 0..2000 {
        if node.view(name, false).is_some_and(|v| v.state == state) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!(
        "{name} never reached {state:?}: {:?}",
        node.view(name, false)
    );
}

fn persisted(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("deployments"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn bad_specs_are_refused_with_clear_errors_and_nothing_persisted() {
    let dir = tempfile::tempdir().unwrap();
    let world = Arc::new(World::default());
    let node = Node::start(config(dir.path(), &world)).unwrap();
    let cases = [
        ("{", "spec: EOF while parsing"),
        (
            r#"{"name":"a","flist":"fake://run","compute":{"cpu":1,"memory":"256M"},"extra":1}"#,
            "unknown field `extra`",
        ),
        (
            &spec("a", "fake://run", "128M"),
            "compute.memory: 128 MiB is below the minimum of 256 MiB",
        ),
        (
            &spec("../a", "fake://run", "256M"),
            "name: `../a` must not start with '.'",
        ),
        (
            &spec("a/b", "fake://run", "256M"),
            "name: `a/b` contains '/'",
        ),
        (&spec("a", "fake://unreachable", "256M"), "is not reachable"),
        (
            r#"{"name":"a","flist":"fake://run","compute":{"cpu":0,"memory":"256M"}}"#,
            "compute.cpu: 0 is out of range",
        ),
        (
            r#"{"name":"a","flist":"fake://run","compute":{"cpu":1,"memory":"256M"},"network":{"interfaces":[{"network":"wan"}]}}"#,
            "unknown network `wan`",
        ),
    ];
    for (body, want) in cases {
        let e = node.create(body.as_bytes()).await.unwrap_err();
        assert!(
            matches!(e, NodeError::Invalid(_) | NodeError::Unreachable(_)),
            "{e:?}"
        );
        assert!(e.to_string().contains(want), "{body}: `{e}` lacks `{want}`");
    }
    assert!(persisted(dir.path()).is_empty());
    assert_eq!(world.starts("a"), 0);
}

#[tokio::test]
async fn overcommit_and_duplicates_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let world = Arc::new(World::default());
    // 2048 MiB total, 512 reserved: 1536 MiB offered.
    let node = Node::start(config(dir.path(), &world)).unwrap();
    node.create(spec("a", "fake://run", "1G").as_bytes())
        .await
        .unwrap();
    let e = node
        .create(spec("a", "fake://run", "256M").as_bytes())
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "a deployment named `a` already exists");
    let e = node
        .create(spec("b", "fake://run", "1G").as_bytes())
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "not enough memory: `b` needs 1024 MiB but only 512 MiB of the node's 1536 MiB are free"
    );
    node.create(spec("c", "fake://run", "512M").as_bytes())
        .await
        .unwrap();
    assert!(matches!(
        node.create(spec("d", "fake://run", "256M").as_bytes())
            .await,
        Err(NodeError::Overcommit { .. })
    ));
    let cap = node.capacity();
    assert_eq!(cap.used.memory, 1536 * MIB);
    assert_eq!(cap.used.cpu, 2);
    assert_eq!(persisted(dir.path()), ["a.json", "c.json"]);
    node.delete("a").await.unwrap();
    node.create(spec("b", "fake://run", "1G").as_bytes())
        .await
        .unwrap();
}

#[tokio::test]
async fn addresses_come_from_the_network_range() {
    let dir = tempfile::tempdir().unwrap();
    let world = Arc::new(World::default());
    let node = Node::start(config(dir.path(), &world)).unwrap();
    let with_net = |name: &str, ip: &str| {
        format!(
            r#"{{"name":"{name}","flist":"fake://run","compute":{{"cpu":1,"memory":"256M"}},"network":{{"interfaces":[{{"network":"lan"{ip}}}]}}}}"#
        )
    };
    let a = node.create(with_net("a", "").as_bytes()).await.unwrap();
    assert_eq!(a.ip, Some("10.9.0.2".parse().unwrap()));
    assert_eq!(
        a.addresses[0].gateway,
        "10.9.0.1".parse::<std::net::Ipv4Addr>().unwrap()
    );
    let b = node
        .create(with_net("b", r#","ip":"10.9.0.50""#).as_bytes())
        .await
        .unwrap();
    assert_eq!(b.ip, Some("10.9.0.50".parse().unwrap()));
    let e = node
        .create(with_net("c", r#","ip":"10.9.0.2""#).as_bytes())
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "network: 10.9.0.2 is already used in network `lan`"
    );
    let e = node
        .create(with_net("c", r#","ip":"10.8.0.2""#).as_bytes())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not a usable guest address"), "{e}");
    assert_eq!(
        node.create(with_net("c", "").as_bytes()).await.unwrap().ip,
        Some("10.9.0.3".parse().unwrap())
    );
}

#[tokio::test]
async fn reconcile_after_a_daemon_restart_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let world = Arc::new(World::default());
    let node = Node::start(config(dir.path(), &world)).unwrap();
    for name in ["a", "b", "c"] {
        node.create(spec(name, "fake://run", "256M").as_bytes())
            .await
            .unwrap();
        wait_state(&node, name, DeploymentState::Running).await;
    }
    node.create(spec("gone", "fake://prepare-fails", "256M").as_bytes())
        .await
        .unwrap();
    wait_state(&node, "gone", DeploymentState::Failed).await;
    // The daemon dies; its VMs keep running.
    node.detach();
    drop(node);
    let node = Node::start(config(dir.path(), &world)).unwrap();
    for name in ["a", "b", "c"] {
        wait_state(&node, name, DeploymentState::Running).await;
        assert_eq!(
            world.starts(name),
            1,
            "{name} was started again instead of re-adopted"
        );
    }
    assert_eq!(
        node.view("gone", false).unwrap().state,
        DeploymentState::Failed
    );
    assert_eq!(node.len(), 4);
    // Down again; meanwhile VM b dies (as on a node reboot).
    node.detach();
    drop(node);
    world.kill("b");
    let node = Node::start(config(dir.path(), &world)).unwrap();
    for _ in 0..2000 {
        if world.running("b") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    wait_state(&node, "b", DeploymentState::Running).await;
    assert!(world.running("b"));
    assert_eq!(
        (world.starts("a"), world.starts("b"), world.starts("c")),
        (1, 2, 1)
    );
    assert_eq!(
        node.list()
            .iter()
            .map(|v| v.name.as_str())
            .collect::<Vec<_>>(),
        ["a", "b", "c", "gone"]
    );
    assert_eq!(
        persisted(dir.path()),
        ["a.json", "b.json", "c.json", "gone.json"]
    );
}

#[tokio::test]
async fn a_crashing_vm_is_restarted_four_times_then_failed() {
    let dir = tempfile::tempdir().unwrap();
    let world = Arc::new(World::default());
    let node = Node::start(config(dir.path(), &world)).unwrap();
    node.create(spec("bad", "fake://crash", "256M").as_bytes())
        .await
        .unwrap();
    wait_state(&node, "bad", DeploymentState::Failed).await;
    let v = node.view("bad", true).unwrap();
    assert_eq!(v.restarts, 4);
    assert_eq!(world.starts("bad"), 5);
    let err = v.error.unwrap();
    assert!(
        err.contains("exit code 1; restarted 4 times within 120 s, giving up"),
        "{err}"
    );
    assert!(v.console_tail.unwrap().contains("hello from bad"));
    // Failed is persisted and survives a restart without new starts; its memory is free.
    node.detach();
    drop(node);
    let node = Node::start(config(dir.path(), &world)).unwrap();
    assert_eq!(
        node.view("bad", false).unwrap().state,
        DeploymentState::Failed
    );
    assert_eq!(node.capacity().used.memory, 0);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(world.starts("bad"), 5);
}

#[tokio::test]
async fn a_vm_that_powers_off_is_exited_not_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let world = Arc::new(World::default());
    let node = Node::start(config(dir.path(), &world)).unwrap();
    node.create(spec("job", "fake://exit", "256M").as_bytes())
        .await
        .unwrap();
    wait_state(&node, "job", DeploymentState::Exited).await;
    assert_eq!(node.view("job", false).unwrap().restarts, 0);
    assert_eq!(world.starts("job"), 1);
}

#[tokio::test]
async fn delete_stops_the_vm_and_removes_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let world = Arc::new(World::default());
    let node = Node::start(config(dir.path(), &world)).unwrap();
    node.create(spec("a", "fake://run", "256M").as_bytes())
        .await
        .unwrap();
    wait_state(&node, "a", DeploymentState::Running).await;
    let paths = node.paths("a");
    assert!(paths.console.exists());
    node.delete("a").await.unwrap();
    assert!(!world.running("a"));
    assert!(!paths.dir.exists());
    assert!(persisted(dir.path()).is_empty());
    assert_eq!(*world.cleaned.lock().unwrap(), ["a"]);
    assert!(matches!(
        node.delete("a").await,
        Err(NodeError::NotFound(_))
    ));
    // A deleted deployment does not come back after a restart.
    node.detach();
    drop(node);
    assert_eq!(Node::start(config(dir.path(), &world)).unwrap().len(), 0);
}

#[tokio::test]
async fn a_deployment_deleted_while_preparing_is_never_started() {
    let dir = tempfile::tempdir().unwrap();
    let world = Arc::new(World::default());
    let node = Node::start(config(dir.path(), &world)).unwrap();
    node.create(spec("a", "fake://run", "256M").as_bytes())
        .await
        .unwrap();
    node.delete("a").await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!world.running("a"));
    assert_eq!(node.len(), 0);
}

mod hostile;
mod http;

#[tokio::test]
async fn stores_and_disks_never_promise_more_than_the_nodes_disk() {
    let dir = tempfile::tempdir().unwrap();
    let world = Arc::new(World::default());
    let node = Node::start(config(dir.path(), &world)).unwrap();
    let total = super::capacity::disk_total(dir.path());
    assert!(total > 0);
    // A volume larger than the node's whole disk (16 TiB is the most a spec may ask).
    let huge = r#"{"name":"big","flist":"fake://run","compute":{"cpu":1,"memory":"256M"},
            "volumes":[{"name":"v","size":"16T","mountpoint":"/v"}]}"#;
    if total >= 16 << 40 {
        eprintln!("skipping: this disk holds 16 TiB");
        return;
    }
    let e = node.create(huge.as_bytes()).await.unwrap_err();
    assert!(matches!(e, NodeError::DiskOvercommit { .. }), "{e}");
    assert!(e.to_string().contains("not enough disk: `big`"), "{e}");
    assert!(persisted(dir.path()).is_empty());
    // A plain deployment promises its root's default store (1 GiB).
    node.create(spec("a", "fake://run", "256M").as_bytes())
        .await
        .unwrap();
    assert_eq!(node.capacity().used.disk, 1 << 30);
}
