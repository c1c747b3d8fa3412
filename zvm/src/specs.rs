//! Parsers for the `key=value,...` device specs of `zvm run`.

use std::path::PathBuf;
use vmm::resources::{BlockIoEngine, DriveConfig, NetConfig, VsockConfig};

/// Parses a `--disk` spec:
/// `path=FILE[,readonly=on|off][,id=NAME][,root=on|off][,mount=PATH][,io=sync|async]`.
/// Disks without an id are named `disk<index>`; `io=async` (or `io_engine=async`) serves
/// the disk off the VMM thread (io_uring, or a worker thread where the host has none). Returns the drive and its `mount=PATH`, where
/// a container flist's entrypoint finds the disk (an ext4 file system).
pub fn parse_disk(spec: &str, index: usize) -> Result<(DriveConfig, Option<String>), String> {
    let mut mount = None;
    let mut path = None;
    let mut read_only = false;
    let mut root = false;
    let mut id = None;
    let mut io_engine = BlockIoEngine::Sync;
    for (key, value) in key_values("disk", spec)? {
        match key {
            "path" => path = Some(PathBuf::from(value)),
            "io" | "io_engine" => {
                io_engine = value
                    .parse()
                    .map_err(|e| format!("invalid disk '{spec}': {e}"))?
            }
            "readonly" | "ro" => read_only = on_off(spec, key, value)?,
            "root" | "is_root" => root = on_off(spec, key, value)?,
            "id" => id = Some(value.to_string()),
            "mount" if value.starts_with('/') => mount = Some(value.to_string()),
            "mount" => return Err(format!("invalid disk '{spec}': mount={value} is not an absolute path")),
            other => return Err(format!("invalid disk '{spec}': unknown key '{other}' (use path, readonly, id, root, mount, io)")),
        }
    }
    let path_on_host =
        path.ok_or_else(|| format!("invalid disk '{spec}': path=FILE is required"))?;
    let drive = DriveConfig {
        drive_id: id.unwrap_or_else(|| format!("disk{index}")),
        path_on_host,
        is_root_device: root,
        is_read_only: read_only,
        rate_limiter: None,
        io_engine,
    };
    Ok((drive, mount))
}

/// Parses a `--net` spec: `tap=NAME[,mac=02:..][,id=NAME][,queues=N]`. Interfaces without
/// an id are named `eth<index>`; `queues=N` asks for N queue pairs (multiqueue; 1 by
/// default), which the VM's validation bounds by its vCPUs.
pub fn parse_net(spec: &str, index: usize) -> Result<NetConfig, String> {
    let mut tap = None;
    let mut mac = None;
    let mut id = None;
    let mut queue_pairs = 1;
    for (key, value) in key_values("net", spec)? {
        match key {
            "tap" => tap = Some(value.to_string()),
            "mac" => mac = Some(value.to_string()),
            "id" => id = Some(value.to_string()),
            "queues" | "queue_pairs" => {
                queue_pairs = value.parse::<u16>().ok().filter(|&n| n >= 1).ok_or_else(|| {
                    format!("invalid net '{spec}': queues must be a number of queue pairs, 1 or more, not '{value}'")
                })?
            }
            other => {
                return Err(format!(
                    "invalid net '{spec}': unknown key '{other}' (use tap, mac, id, queues)"
                ))
            }
        }
    }
    let host_dev_name = tap.ok_or_else(|| format!("invalid net '{spec}': tap=NAME is required"))?;
    Ok(NetConfig {
        iface_id: id.unwrap_or_else(|| format!("eth{index}")),
        host_dev_name,
        guest_mac: mac,
        rx_rate_limiter: None,
        tx_rate_limiter: None,
        queue_pairs,
    })
}

/// Parses a `--vsock` spec: `cid=N,uds=PATH` (Firecracker's `guest_cid` and `uds_path`
/// are accepted as key names too).
pub fn parse_vsock(spec: &str) -> Result<VsockConfig, String> {
    let mut cid = None;
    let mut uds = None;
    for (key, value) in key_values("vsock", spec)? {
        match key {
            "cid" | "guest_cid" => {
                cid = Some(value.parse::<u32>().map_err(|_| {
                    format!("invalid vsock '{spec}': cid must be a number, not '{value}'")
                })?)
            }
            "uds" | "uds_path" if !value.is_empty() => uds = Some(PathBuf::from(value)),
            other => {
                return Err(format!(
                    "invalid vsock '{spec}': unknown or empty key '{other}' (use cid, uds)"
                ))
            }
        }
    }
    Ok(VsockConfig {
        guest_cid: cid.ok_or_else(|| format!("invalid vsock '{spec}': cid=N is required"))?,
        uds_path: uds.ok_or_else(|| format!("invalid vsock '{spec}': uds=PATH is required"))?,
    })
}

/// The `key=value` pairs of a comma-separated `kind` spec, in order; empty parts are
/// skipped, a part without `=` is an error.
fn key_values<'a>(kind: &str, spec: &'a str) -> Result<Vec<(&'a str, &'a str)>, String> {
    spec.split(',')
        .filter(|p| !p.is_empty())
        .map(|part| {
            part.split_once('=')
                .ok_or_else(|| format!("invalid {kind} '{spec}': '{part}' is not key=value"))
        })
        .collect()
}

fn on_off(spec: &str, key: &str, value: &str) -> Result<bool, String> {
    match value {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!(
            "invalid disk '{spec}': {key} must be on or off, not '{value}'"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_and_minimal_disk_specs() {
        let (d, _) = parse_disk("path=/img/a.ext4,readonly=on,id=data,root=off", 0).expect("valid");
        assert_eq!(d.path_on_host, PathBuf::from("/img/a.ext4"));
        assert!(d.is_read_only && !d.is_root_device);
        assert_eq!(d.drive_id, "data");
        let (d, _) = parse_disk("path=/img/b.raw", 3).expect("valid");
        assert_eq!(d.drive_id, "disk3");
        assert!(!d.is_read_only);
        assert!(
            parse_disk("path=/r.img,root=on", 0)
                .expect("root")
                .0
                .is_root_device
        );
    }

    #[test]
    fn net_specs() {
        let n = parse_net("tap=tap0,mac=02:00:00:00:00:05,id=uplink", 0).expect("valid");
        assert_eq!(
            (
                n.host_dev_name.as_str(),
                n.guest_mac.as_deref(),
                n.iface_id.as_str()
            ),
            ("tap0", Some("02:00:00:00:00:05"), "uplink")
        );
        let n = parse_net("tap=zt1", 2).expect("valid");
        assert_eq!((n.iface_id.as_str(), n.guest_mac), ("eth2", None));
        assert!(parse_net("mac=02:00:00:00:00:01", 0)
            .expect_err("no tap")
            .contains("tap=NAME is required"));
        assert!(parse_net("tap=t,mtu=9000", 0)
            .expect_err("unknown")
            .contains("unknown key 'mtu'"));
        assert!(parse_net("tap0", 0)
            .expect_err("not kv")
            .contains("not key=value"));
        assert_eq!(parse_net("tap=t", 0).expect("valid").queue_pairs, 1);
        assert_eq!(
            parse_net("tap=t,queues=2", 0).expect("valid").queue_pairs,
            2
        );
        for bad in ["0", "-1", "two", "70000", ""] {
            assert!(parse_net(&format!("tap=t,queues={bad}"), 0)
                .expect_err(bad)
                .contains("queues must be a number of queue pairs"));
        }
    }

    #[test]
    fn bad_disk_specs_say_what_is_wrong() {
        assert!(parse_disk("readonly=on", 0)
            .expect_err("no path")
            .contains("path=FILE is required"));
        assert!(parse_disk("path=/a,readonly=maybe", 0)
            .expect_err("bad bool")
            .contains("on or off"));
        assert!(parse_disk("path=/a,cache=none", 0)
            .expect_err("unknown")
            .contains("unknown key 'cache'"));
        assert!(parse_disk("/a.img", 0)
            .expect_err("not kv")
            .contains("not key=value"));
        assert_eq!(
            parse_disk("path=/a,io=async", 0)
                .expect("async")
                .0
                .io_engine,
            BlockIoEngine::Async
        );
        assert_eq!(
            parse_disk("path=/a,io_engine=Sync", 0)
                .expect("sync")
                .0
                .io_engine,
            BlockIoEngine::Sync
        );
        assert!(parse_disk("path=/a,io=fast", 0)
            .expect_err("unknown engine")
            .contains("sync or async"));
        assert!(parse_disk("path=/a,mount=data", 0)
            .expect_err("relative")
            .contains("not an absolute path"));
        let (d, mount) = parse_disk("path=/a,id=data,mount=/srv/data", 0).expect("valid");
        assert_eq!(
            (d.drive_id.as_str(), mount.as_deref()),
            ("data", Some("/srv/data"))
        );
    }

    #[test]
    fn vsock_specs_parse() {
        let v = parse_vsock("cid=3,uds=/run/v.sock").expect("valid");
        assert_eq!((v.guest_cid, v.uds_path), (3, PathBuf::from("/run/v.sock")));
        let v = parse_vsock("guest_cid=42,uds_path=v.sock").expect("firecracker names");
        assert_eq!((v.guest_cid, v.uds_path), (42, PathBuf::from("v.sock")));
        assert!(parse_vsock("uds=/v.sock")
            .expect_err("no cid")
            .contains("cid=N is required"));
        assert!(parse_vsock("cid=3")
            .expect_err("no uds")
            .contains("uds=PATH is required"));
        assert!(parse_vsock("cid=x,uds=/v")
            .expect_err("bad cid")
            .contains("must be a number"));
        assert!(parse_vsock("cid=3,uds=/v,port=1")
            .expect_err("unknown")
            .contains("unknown or empty key 'port'"));
        assert!(parse_vsock("cid=3,uds=")
            .expect_err("empty")
            .contains("'uds'"));
        assert!(parse_vsock("3")
            .expect_err("not kv")
            .contains("not key=value"));
    }
}
