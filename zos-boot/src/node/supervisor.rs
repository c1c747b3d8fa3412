//! One task per deployment: adopt or prepare and start its VM, watch it, restart it after
//! a crash with back-off (see [`super::restart`]), stop it when the deployment is deleted.

use super::core::Node;
use super::restart::{Decision, RestartTracker};
use super::runner::{VmExit, VmInstance};
use super::store::DeploymentState;
use tokio::sync::watch;

/// What ended a wait.
enum Wake<T> {
    Done(T),
    /// Stop requested (deletion).
    Stop,
    /// The node let go of this deployment (daemon shutdown): leave the VM alone.
    Detached,
}

async fn or_stop<T>(
    fut: impl std::future::Future<Output = T>,
    stop: &mut watch::Receiver<bool>,
) -> Wake<T> {
    if *stop.borrow() {
        return Wake::Stop;
    }
    tokio::select! {
        v = fut => Wake::Done(v),
        changed = stop.changed() => match changed {
            Ok(()) if *stop.borrow() => Wake::Stop,
            Ok(()) => Wake::Detached,
            Err(_) => Wake::Detached,
        },
    }
}

fn set_state(
    node: &Node,
    name: &str,
    state: DeploymentState,
    error: Option<String>,
    pid: Option<u32>,
) {
    node.update(name, |r, p| {
        r.state = state;
        if error.is_some() || state == DeploymentState::Running {
            r.error = error;
        }
        *p = pid;
    });
}

/// Supervises deployment `name` until it is deleted, fails, exits, or the node detaches.
pub(super) async fn supervise(node: Node, name: String, mut stop: watch::Receiver<bool>) {
    let Some(record) = node.record(&name) else {
        return;
    };
    let runner = node.inner.cfg.runner.clone();
    let paths = node.paths(&name);
    if let Err(e) = std::fs::create_dir_all(&paths.dir) {
        set_state(
            &node,
            &name,
            DeploymentState::Failed,
            Some(format!("{}: {e}", paths.dir.display())),
            None,
        );
        return;
    }
    let mut instance: Option<Box<dyn VmInstance>> = runner.adopt(&record, &paths);
    if let Some(vm) = &instance {
        tracing::info!(deployment = %name, pid = ?vm.pid(), "re-adopted a running VM");
    } else {
        let (r, rec, p) = (runner.clone(), record.clone(), paths.clone());
        match or_stop(
            tokio::task::spawn_blocking(move || r.prepare(&rec, &p)),
            &mut stop,
        )
        .await
        {
            Wake::Done(Ok(Ok(()))) => {}
            Wake::Done(Ok(Err(e))) => {
                tracing::error!(deployment = %name, "preparing failed: {e}");
                set_state(&node, &name, DeploymentState::Failed, Some(e), None);
                return;
            }
            Wake::Done(Err(e)) => {
                set_state(
                    &node,
                    &name,
                    DeploymentState::Failed,
                    Some(e.to_string()),
                    None,
                );
                return;
            }
            Wake::Stop | Wake::Detached => return,
        }
    }
    let mut tracker = RestartTracker::new(node.inner.cfg.restart);
    loop {
        let mut vm = match instance.take() {
            Some(vm) => vm,
            None => {
                let Some(record) = node.record(&name) else {
                    return;
                };
                match runner.start(&record, &paths) {
                    Ok(vm) => vm,
                    Err(e) => {
                        tracing::warn!(deployment = %name, "start failed: {e}");
                        if !after_crash(&node, &name, &mut tracker, e, &mut stop).await {
                            return;
                        }
                        continue;
                    }
                }
            }
        };
        set_state(&node, &name, DeploymentState::Running, None, vm.pid());
        let exit = match or_stop(vm.wait(), &mut stop).await {
            Wake::Done(exit) => exit,
            Wake::Stop => {
                vm.stop(node.inner.cfg.stop_grace).await;
                return;
            }
            Wake::Detached => return,
        };
        match exit {
            VmExit::Success => {
                tracing::info!(deployment = %name, "VM ended by itself");
                set_state(&node, &name, DeploymentState::Exited, None, None);
                return;
            }
            VmExit::Failure(why) => {
                tracing::warn!(deployment = %name, "VM crashed: {why}");
                if !after_crash(&node, &name, &mut tracker, why, &mut stop).await {
                    return;
                }
            }
        }
    }
}

/// Applies the restart policy after a crash; `false` when supervision ends.
async fn after_crash(
    node: &Node,
    name: &str,
    tracker: &mut RestartTracker,
    why: String,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    match tracker.on_crash(std::time::Instant::now()) {
        Decision::GiveUp => {
            let limits = node.inner.cfg.restart;
            tracing::error!(deployment = %name, "crashed too often; marked failed");
            let msg = format!(
                "{why}; restarted {} times within {} s, giving up",
                limits.max_restarts,
                limits.window.as_secs()
            );
            set_state(node, name, DeploymentState::Failed, Some(msg), None);
            false
        }
        Decision::RestartAfter(delay) => {
            node.update(name, |r, p| {
                r.state = DeploymentState::Restarting;
                r.restarts += 1;
                r.error = Some(why);
                *p = None;
            });
            matches!(
                or_stop(tokio::time::sleep(delay), stop).await,
                Wake::Done(())
            )
        }
    }
}
