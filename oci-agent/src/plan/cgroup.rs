//! `linux.resources` and `linux.cgroupsPath` -> cgroup v2 directory and file writes.

use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::LinuxResources;

use super::PlanError;

/// The container's cgroup: a directory under the cgroup v2 root and the files to write there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupPlan {
    /// Path relative to the cgroup root (never empty, no `..`).
    pub path: PathBuf,
    /// `(file, value)` pairs written in order, e.g. `("memory.max", "268435456")`.
    pub writes: Vec<(String, String)>,
}

/// Directory used when the spec has no cgroupsPath.
pub const DEFAULT_CGROUP: &str = "zvm/container";

/// Turns `cgroupsPath` into a safe relative path. Absolute paths are taken from the cgroup root;
/// the systemd form `slice:prefix:name` becomes `slice/prefix-name.scope` (as runc does).
pub fn cgroup_path(spec_path: Option<&Path>) -> Result<PathBuf, PlanError> {
    let Some(p) = spec_path.filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(PathBuf::from(DEFAULT_CGROUP));
    };
    let text = p.to_string_lossy();
    let owned;
    let p = if !text.starts_with('/') && text.matches(':').count() == 2 {
        let mut parts = text.splitn(3, ':');
        let (slice, prefix, name) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        let slice = if slice.is_empty() {
            "system.slice"
        } else {
            slice
        };
        owned = PathBuf::from(slice).join(format!("{prefix}-{name}.scope"));
        owned.as_path()
    } else {
        p
    };
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(PlanError::BadCgroupPath(p.to_path_buf()))
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(PlanError::BadCgroupPath(p.to_path_buf()));
    }
    Ok(out)
}

fn max_or(v: i64) -> String {
    if v < 0 {
        "max".into()
    } else {
        v.to_string()
    }
}

/// cgroup v1 cpu.shares (2..262144) -> v2 cpu.weight (1..10000), the conversion runc uses.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// `(file, value)` writes and the names of resource sections left untranslated.
pub type ResourceWrites = (Vec<(String, String)>, Vec<&'static str>);

/// The file writes for `linux.resources`. Block I/O, hugepage, network, RDMA and device rules
/// are not translated (the VM is the isolation boundary); they are listed in the second value
/// so the caller can log them.
pub fn plan_resources(r: &LinuxResources) -> Result<ResourceWrites, PlanError> {
    let mut w = Vec::new();
    let mut ignored = Vec::new();
    let mut put = |file: &str, value: String| w.push((file.to_owned(), value));
    if let Some(m) = r.memory() {
        if let Some(limit) = m.limit() {
            put("memory.max", max_or(limit));
        }
        if let Some(res) = m.reservation() {
            put("memory.low", max_or(res));
        }
        if let Some(swap) = m.swap() {
            // v1 "swap" is memory+swap; v2 swap.max is swap alone.
            let v = match (swap, m.limit()) {
                (s, _) if s < 0 => "max".to_string(),
                (s, Some(l)) if l >= 0 => {
                    if s < l {
                        return Err(PlanError::BadResource(format!(
                            "memory.swap ({s}) is below memory.limit ({l})"
                        )));
                    }
                    (s - l).to_string()
                }
                (s, _) => s.to_string(),
            };
            put("memory.swap.max", v);
        }
    }
    if let Some(c) = r.cpu() {
        if c.quota().is_some() || c.period().is_some() {
            let quota = c.quota().filter(|q| *q > 0);
            let period = c.period().unwrap_or(100_000);
            if period == 0 {
                return Err(PlanError::BadResource("cpu.period is 0".into()));
            }
            let quota = quota.map_or("max".to_string(), |q| q.to_string());
            put("cpu.max", format!("{quota} {period}"));
        }
        if let Some(shares) = c.shares() {
            put("cpu.weight", shares_to_weight(shares).to_string());
        }
        if let Some(cpus) = c.cpus().as_ref().filter(|s| !s.is_empty()) {
            put("cpuset.cpus", cpus.clone());
        }
        if let Some(mems) = c.mems().as_ref().filter(|s| !s.is_empty()) {
            put("cpuset.mems", mems.clone());
        }
    }
    if let Some(p) = r.pids() {
        let limit = p.limit();
        put(
            "pids.max",
            if limit <= 0 {
                "max".into()
            } else {
                limit.to_string()
            },
        );
    }
    if let Some(unified) = r.unified() {
        let mut keys: Vec<_> = unified.keys().collect();
        keys.sort();
        for k in keys {
            if k.contains('/') || k.starts_with('.') || !k.contains('.') {
                return Err(PlanError::BadResource(format!(
                    "unified cgroup file name {k:?}"
                )));
            }
            put(k, unified[k].clone());
        }
    }
    if r.block_io().is_some() {
        ignored.push("blockIO");
    }
    if r.hugepage_limits().as_ref().is_some_and(|h| !h.is_empty()) {
        ignored.push("hugepageLimits");
    }
    if r.network().is_some() {
        ignored.push("network");
    }
    if r.rdma().is_some() {
        ignored.push("rdma");
    }
    Ok((w, ignored))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn writes(json: &str) -> Vec<(String, String)> {
        plan_resources(&serde_json::from_str(json).unwrap())
            .unwrap()
            .0
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn memory_cpu_pids() {
        let w = writes(
            r#"{"memory": {"limit": 268435456, "reservation": -1, "swap": 536870912},
                "cpu": {"quota": 50000, "period": 100000, "shares": 1024, "cpus": "0"},
                "pids": {"limit": 64}}"#,
        );
        assert_eq!(
            w,
            pairs(&[
                ("memory.max", "268435456"),
                ("memory.low", "max"),
                ("memory.swap.max", "268435456"),
                ("cpu.max", "50000 100000"),
                ("cpu.weight", "39"),
                ("cpuset.cpus", "0"),
                ("pids.max", "64"),
            ])
        );
        assert_eq!(
            writes(r#"{"cpu": {"quota": -1}, "pids": {"limit": 0}, "memory": {"limit": -1}}"#),
            pairs(&[
                ("memory.max", "max"),
                ("cpu.max", "max 100000"),
                ("pids.max", "max")
            ])
        );
    }

    #[test]
    fn unified_and_bad_values() {
        assert_eq!(
            writes(r#"{"unified": {"memory.high": "1000000", "io.weight": "50"}}"#),
            pairs(&[("io.weight", "50"), ("memory.high", "1000000")])
        );
        for bad in [
            r#"{"unified": {"../../release_agent": "x"}}"#,
            r#"{"memory": {"limit": 100, "swap": 50}}"#,
            r#"{"cpu": {"quota": 1000, "period": 0}}"#,
        ] {
            assert!(matches!(
                plan_resources(&serde_json::from_str(bad).unwrap()),
                Err(PlanError::BadResource(_))
            ));
        }
    }

    #[test]
    fn weight_conversion() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1024), 39);
    }

    #[test]
    fn cgroup_paths() {
        assert_eq!(cgroup_path(None).unwrap(), PathBuf::from(DEFAULT_CGROUP));
        assert_eq!(
            cgroup_path(Some(Path::new("/a/b"))).unwrap(),
            PathBuf::from("a/b")
        );
        assert_eq!(
            cgroup_path(Some(Path::new("machine.slice:libpod:abc"))).unwrap(),
            PathBuf::from("machine.slice/libpod-abc.scope")
        );
        assert!(cgroup_path(Some(Path::new("/a/../../etc"))).is_err());
        assert!(cgroup_path(Some(Path::new("/"))).is_err());
    }
}
