//! config.json `mounts` -> mount(2) calls.

use std::path::PathBuf;

use oci_spec::runtime::Mount;

use super::PlanError;

/// One mount of the container, with the options already turned into flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    /// Absolute path inside the container.
    pub destination: PathBuf,
    /// What to mount: a device, a path for binds, or a name (`proc`, `tmpfs`...).
    pub source: Option<PathBuf>,
    /// Filesystem type; `None` for binds.
    pub fstype: Option<String>,
    /// `MS_*` flags for the first mount(2) (for binds: `MS_BIND` and maybe `MS_REC`).
    pub flags: u64,
    /// Flags applied by a second `MS_REMOUNT|MS_BIND` call (binds with ro, nosuid, ...).
    pub remount_flags: Option<u64>,
    /// Propagation changes (`MS_SHARED`, `MS_SLAVE`, ... maybe with `MS_REC`), one call each.
    pub propagation: Vec<u64>,
    /// Filesystem-specific options (`mode=755,size=65536k`).
    pub data: Option<String>,
}

impl MountPlan {
    /// Whether this is a bind mount.
    pub fn is_bind(&self) -> bool {
        self.flags & libc::MS_BIND != 0
    }
}

/// How one option word changes the flags.
enum Opt {
    Set(u64),
    Clear(u64),
    Propagation(u64),
    Ignore,
}

fn option(word: &str) -> Option<Opt> {
    use Opt::*;
    Some(match word {
        "ro" => Set(libc::MS_RDONLY),
        "rw" => Clear(libc::MS_RDONLY),
        "nosuid" => Set(libc::MS_NOSUID),
        "suid" => Clear(libc::MS_NOSUID),
        "nodev" => Set(libc::MS_NODEV),
        "dev" => Clear(libc::MS_NODEV),
        "noexec" => Set(libc::MS_NOEXEC),
        "exec" => Clear(libc::MS_NOEXEC),
        "sync" => Set(libc::MS_SYNCHRONOUS),
        "async" => Clear(libc::MS_SYNCHRONOUS),
        "dirsync" => Set(libc::MS_DIRSYNC),
        "remount" => Set(libc::MS_REMOUNT),
        "mand" => Set(libc::MS_MANDLOCK),
        "nomand" => Clear(libc::MS_MANDLOCK),
        "atime" => Clear(libc::MS_NOATIME),
        "noatime" => Set(libc::MS_NOATIME),
        "diratime" => Clear(libc::MS_NODIRATIME),
        "nodiratime" => Set(libc::MS_NODIRATIME),
        "relatime" => Set(libc::MS_RELATIME),
        "norelatime" => Clear(libc::MS_RELATIME),
        "strictatime" => Set(libc::MS_STRICTATIME),
        "nostrictatime" => Clear(libc::MS_STRICTATIME),
        "silent" => Set(libc::MS_SILENT),
        "loud" => Clear(libc::MS_SILENT),
        "bind" => Set(libc::MS_BIND),
        "rbind" => Set(libc::MS_BIND | libc::MS_REC),
        "private" => Propagation(libc::MS_PRIVATE),
        "rprivate" => Propagation(libc::MS_PRIVATE | libc::MS_REC),
        "shared" => Propagation(libc::MS_SHARED),
        "rshared" => Propagation(libc::MS_SHARED | libc::MS_REC),
        "slave" => Propagation(libc::MS_SLAVE),
        "rslave" => Propagation(libc::MS_SLAVE | libc::MS_REC),
        "unbindable" => Propagation(libc::MS_UNBINDABLE),
        "runbindable" => Propagation(libc::MS_UNBINDABLE | libc::MS_REC),
        // Accepted and meaningless here (runc's copy-up of tmpfs, recursive-ro variants are
        // approximated by the plain flag).
        "tmpcopyup" | "rro" => Ignore,
        _ => return None,
    })
}

/// Maps a propagation name (`linux.rootfsPropagation`) to its flags.
pub fn propagation_flags(name: &str) -> Result<u64, PlanError> {
    match option(name) {
        Some(Opt::Propagation(f)) => Ok(f),
        _ => Err(PlanError::BadPropagation(name.to_owned())),
    }
}

/// Plans one spec mount.
pub fn plan_mount(m: &Mount) -> Result<MountPlan, PlanError> {
    let destination = m.destination().clone();
    if !destination.is_absolute() {
        return Err(PlanError::RelativeMountDestination(destination));
    }
    if m.uid_mappings().is_some() || m.gid_mappings().is_some() {
        return Err(PlanError::Unsupported(format!(
            "id-mapped mount at {}",
            destination.display()
        )));
    }
    let mut flags = 0u64;
    let mut propagation = Vec::new();
    let mut data = Vec::new();
    for word in m.options().iter().flatten() {
        match option(word) {
            Some(Opt::Set(f)) => flags |= f,
            Some(Opt::Clear(f)) => flags &= !f,
            Some(Opt::Propagation(f)) => propagation.push(f),
            Some(Opt::Ignore) => {}
            None => data.push(word.as_str()),
        }
    }
    let mut fstype = m.typ().clone().filter(|t| !t.is_empty() && t != "none");
    if fstype.as_deref() == Some("bind") {
        fstype = None;
        flags |= libc::MS_BIND;
    }
    // Only cgroup v2 exists in the VM; a v1 request gets the container's v2 view.
    if fstype.as_deref() == Some("cgroup") {
        fstype = Some("cgroup2".into());
        data.clear();
    }
    let mut remount_flags = None;
    if flags & libc::MS_BIND != 0 {
        if m.source().is_none() {
            return Err(PlanError::BindWithoutSource(destination));
        }
        fstype = None;
        let extra = flags & !(libc::MS_BIND | libc::MS_REC | libc::MS_REMOUNT);
        if extra != 0 {
            remount_flags = Some(extra | libc::MS_BIND | libc::MS_REMOUNT);
        }
        flags &= libc::MS_BIND | libc::MS_REC;
        data.clear();
    } else if fstype.is_none() {
        return Err(PlanError::MountWithoutType(destination));
    }
    Ok(MountPlan {
        destination,
        source: m.source().clone(),
        fstype,
        flags,
        remount_flags,
        propagation,
        data: (!data.is_empty()).then(|| data.join(",")),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn mount(json: &str) -> Result<MountPlan, PlanError> {
        plan_mount(&serde_json::from_str::<Mount>(json).unwrap())
    }

    #[test]
    fn tmpfs_options_split_into_flags_and_data() {
        let p = mount(
            r#"{"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}"#,
        )
        .unwrap();
        assert_eq!(p.fstype.as_deref(), Some("tmpfs"));
        assert_eq!(p.flags, libc::MS_NOSUID | libc::MS_STRICTATIME);
        assert_eq!(p.data.as_deref(), Some("mode=755,size=65536k"));
        assert_eq!(p.remount_flags, None);
        assert!(!p.is_bind());
    }

    #[test]
    fn bind_with_ro_needs_a_remount() {
        let p = mount(
            r#"{"destination": "/data", "type": "bind", "source": "/srv",
                "options": ["rbind", "ro", "nosuid", "rprivate"]}"#,
        )
        .unwrap();
        assert!(p.is_bind());
        assert_eq!(p.fstype, None);
        assert_eq!(p.flags, libc::MS_BIND | libc::MS_REC);
        assert_eq!(
            p.remount_flags,
            Some(libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_BIND | libc::MS_REMOUNT)
        );
        assert_eq!(p.propagation, vec![libc::MS_PRIVATE | libc::MS_REC]);
        // rw after ro clears it again.
        let p = mount(r#"{"destination": "/d", "source": "/s", "options": ["bind", "ro", "rw"]}"#)
            .unwrap();
        assert_eq!(p.remount_flags, None);
    }

    #[test]
    fn cgroup_v1_becomes_cgroup2() {
        let p = mount(
            r#"{"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}"#,
        )
        .unwrap();
        assert_eq!(p.fstype.as_deref(), Some("cgroup2"));
        assert_ne!(p.flags & libc::MS_RDONLY, 0);
    }

    #[test]
    fn bad_mounts_are_refused() {
        assert!(matches!(
            mount(r#"{"destination": "rel", "type": "tmpfs"}"#),
            Err(PlanError::RelativeMountDestination(_))
        ));
        assert!(matches!(
            mount(r#"{"destination": "/x", "options": ["bind"]}"#),
            Err(PlanError::BindWithoutSource(_))
        ));
        assert!(matches!(
            mount(r#"{"destination": "/x", "source": "foo"}"#),
            Err(PlanError::MountWithoutType(_))
        ));
        assert!(propagation_flags("rslave").is_ok());
        assert!(matches!(
            propagation_flags("sideways"),
            Err(PlanError::BadPropagation(_))
        ));
    }
}
