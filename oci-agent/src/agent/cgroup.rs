//! The container's cgroup v2 directory: created, controllers enabled on the way down, limits
//! written; removed at the end.

use std::path::{Path, PathBuf};

use crate::plan::CgroupPlan;

/// Whether `root` is a cgroup v2 hierarchy.
pub fn available(root: &Path) -> bool {
    root.join("cgroup.controllers").is_file()
}

/// Controllers the writes need (`memory.max` -> `memory`).
fn needed_controllers(plan: &CgroupPlan) -> Vec<String> {
    let mut v: Vec<String> = plan
        .writes
        .iter()
        .filter_map(|(f, _)| f.split_once('.').map(|(c, _)| c.to_owned()))
        .filter(|c| c != "cgroup")
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Creates the cgroup and applies the limits. `Ok(None)` when cgroup v2 is not available and
/// nothing needs it.
pub fn setup(root: &Path, plan: &CgroupPlan) -> Result<Option<PathBuf>, String> {
    if !available(root) {
        if plan.writes.is_empty() {
            tracing::info!(
                "no cgroup v2 at {}: container runs without its own cgroup",
                root.display()
            );
            return Ok(None);
        }
        return Err(format!(
            "cgroup v2 is not available at {}, cannot apply linux.resources",
            root.display()
        ));
    }
    let dir = root.join(&plan.path);
    std::fs::create_dir_all(&dir).map_err(|e| format!("create cgroup {}: {e}", dir.display()))?;
    let controllers = needed_controllers(plan);
    if !controllers.is_empty() {
        let enable = controllers
            .iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(" ");
        // Every ancestor of the container's directory delegates the controllers.
        let mut at = root.to_path_buf();
        for comp in plan.path.components() {
            let file = at.join("cgroup.subtree_control");
            std::fs::write(&file, &enable)
                .map_err(|e| format!("enable controllers {enable:?} in {}: {e}", file.display()))?;
            at.push(comp);
        }
    }
    for (file, value) in &plan.writes {
        std::fs::write(dir.join(file), value).map_err(|e| format!("cgroup {file}={value}: {e}"))?;
    }
    Ok(Some(dir))
}

/// Removes the container's cgroup directory `dir` and its now-empty parents below `root`.
pub fn remove(root: &Path, dir: &Path) {
    let mut at = dir;
    while at != root && at.starts_with(root) {
        if std::fs::remove_dir(at).is_err() {
            break;
        }
        match at.parent() {
            Some(p) => at = p,
            None => break,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn controllers_from_writes() {
        let plan = CgroupPlan {
            path: "a/b".into(),
            writes: vec![
                ("memory.max".into(), "1".into()),
                ("pids.max".into(), "2".into()),
                ("memory.low".into(), "3".into()),
            ],
        };
        assert_eq!(needed_controllers(&plan), ["memory", "pids"]);
    }

    #[test]
    fn no_cgroup2_is_fine_without_limits_and_an_error_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut plan = CgroupPlan {
            path: "c".into(),
            writes: vec![],
        };
        assert_eq!(setup(dir.path(), &plan).unwrap(), None);
        plan.writes.push(("pids.max".into(), "5".into()));
        assert!(setup(dir.path(), &plan)
            .unwrap_err()
            .contains("not available"));
    }
}
