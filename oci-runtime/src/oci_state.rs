//! The OCI state JSON: what `state` and `list` print, and what hooks read on stdin.

use crate::state::ContainerRecord;
use crate::state::ContainerState;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The runtime spec version this runtime implements (`ociVersion` of states, `spec:` of
/// `--version`).
pub const OCI_VERSION: &str = oci_spec::runtime::VERSION;

/// The state JSON as `state` and `list --format json` print it (runc's fields: the OCI state
/// plus rootfs, created and owner). `pid` is 0 once the container has stopped, as with runc.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateView {
    /// Runtime spec version.
    #[serde(rename = "ociVersion")]
    pub oci_version: String,
    /// Container id.
    pub id: String,
    /// The host process that represents the container; 0 when stopped.
    pub pid: i32,
    /// Live status.
    pub status: ContainerState,
    /// Absolute bundle path.
    pub bundle: PathBuf,
    /// Absolute rootfs path.
    pub rootfs: PathBuf,
    /// Creation time, RFC 3339.
    pub created: String,
    /// Owner's user name (empty for `state`, as runc prints it).
    pub owner: String,
    /// The config's annotations.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The state handed to hooks on stdin: exactly the OCI state.
#[derive(Debug, Serialize)]
struct HookState<'a> {
    #[serde(rename = "ociVersion")]
    oci_version: &'a str,
    id: &'a str,
    status: ContainerState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<i32>,
    bundle: &'a Path,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: &'a BTreeMap<String, String>,
}

pub(crate) fn hook_state(rec: &ContainerRecord, status: ContainerState) -> String {
    let pid = if status == ContainerState::Stopped {
        None
    } else {
        rec.pid
    };
    let state = HookState {
        oci_version: OCI_VERSION,
        id: &rec.id,
        status,
        pid,
        bundle: &rec.bundle,
        annotations: &rec.annotations,
    };
    serde_json::to_string(&state).unwrap_or_else(|_| "{}".into())
}

pub(crate) fn view(rec: &ContainerRecord, status: ContainerState, owner: String) -> StateView {
    StateView {
        oci_version: OCI_VERSION.to_string(),
        id: rec.id.clone(),
        pid: if status == ContainerState::Stopped {
            0
        } else {
            rec.pid.unwrap_or(0)
        },
        status,
        bundle: rec.bundle.clone(),
        rootfs: rec.rootfs.clone(),
        created: rec.created.clone(),
        owner,
        annotations: rec.annotations.clone(),
    }
}

/// The user name of `uid` from /etc/passwd, else the number.
pub(crate) fn user_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                (f.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_string())
            })
        })
        .unwrap_or_else(|| uid.to_string())
}
