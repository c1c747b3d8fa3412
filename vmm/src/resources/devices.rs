//! Device entries of [`VmResources`]: drives, entropy, network interfaces, vsock, and
//! their validation.

use super::{ResourcesError, VmResources, MAX_DRIVES, MAX_NET_INTERFACES, MAX_NET_QUEUE_PAIRS};
pub use crate::devices::virtio::block::BlockIoEngine;
use crate::rate_limiter::RateLimiterConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A virtio block device (an entry of Firecracker's `drives`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveConfig {
    /// Unique name; the guest reads its first 20 bytes as the disk serial
    /// (`/dev/disk/by-id/virtio-<id>`).
    pub drive_id: String,
    /// Disk image file or block device on the host.
    pub path_on_host: PathBuf,
    /// Boot from this drive: it is attached first (`/dev/vda`) and the command line gets
    /// `root=/dev/vda` (`ro` when read-only, `rw` otherwise).
    pub is_root_device: bool,
    /// The guest sees a read-only disk and zvm refuses writes.
    #[serde(default)]
    pub is_read_only: bool,
    /// Limits on the disk's bandwidth and request rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
    /// How requests are served: on the VMM thread (`Sync`, the default) or off it
    /// (`Async`: io_uring, or a worker thread where the host has none).
    #[serde(default, skip_serializing_if = "BlockIoEngine::is_sync")]
    pub io_engine: BlockIoEngine,
}

/// A virtio entropy device (Firecracker's `entropy`); it has no options yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyConfig {}

/// A virtio-net device on a host tap (an entry of Firecracker's `network-interfaces`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Unique name of the interface.
    pub iface_id: String,
    /// The host tap device; created (for zvm's lifetime) if it does not exist and zvm
    /// has CAP_NET_ADMIN.
    pub host_dev_name: String,
    /// The guest's MAC address (`02:00:00:00:00:01`); the guest picks one if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// Limits on what the guest receives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// Limits on what the guest sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
    /// Receive and transmit queue pairs (virtio-net multiqueue, opt-in): 1, the default,
    /// is a single-queue device; more (at most one per vCPU) need a multiqueue tap. The
    /// rate limiters cover the interface, all its pairs together.
    #[serde(default = "one_pair", skip_serializing_if = "is_one_pair")]
    pub queue_pairs: u16,
}

fn one_pair() -> u16 {
    1
}

fn is_one_pair(pairs: &u16) -> bool {
    *pairs == 1
}

/// A virtio-vsock device (Firecracker's `vsock`): guest `AF_VSOCK` streams reach host Unix
/// sockets at `uds_path` (host-initiated, with `CONNECT <port>`) and `<uds_path>_<port>`
/// (guest-initiated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's CID (3 or more).
    pub guest_cid: u32,
    /// Where zvm listens; a stale socket there is replaced.
    pub uds_path: PathBuf,
}

impl VmResources {
    pub(super) fn validate_drives(&self) -> Result<(), ResourcesError> {
        if self.drives.len() > MAX_DRIVES {
            return Err(ResourcesError::TooManyDrives {
                count: self.drives.len(),
                max: MAX_DRIVES,
            });
        }
        let mut root: Option<&str> = None;
        for (i, drive) in self.drives.iter().enumerate() {
            let id = &drive.drive_id;
            if id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(ResourcesError::BadDriveId(id.clone()));
            }
            if self.drives[..i].iter().any(|d| &d.drive_id == id) {
                return Err(ResourcesError::DuplicateDriveId(id.clone()));
            }
            if drive.is_root_device {
                if let Some(first) = root {
                    return Err(ResourcesError::MultipleRootDevices(
                        first.to_string(),
                        id.clone(),
                    ));
                }
                root = Some(id);
            }
            check_disk(&drive.path_on_host)?;
        }
        Ok(())
    }

    pub(super) fn validate_net(&self) -> Result<(), ResourcesError> {
        if self.net.len() > MAX_NET_INTERFACES {
            return Err(ResourcesError::TooManyNetInterfaces {
                count: self.net.len(),
                max: MAX_NET_INTERFACES,
            });
        }
        for (i, net) in self.net.iter().enumerate() {
            let id = &net.iface_id;
            if id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            {
                return Err(ResourcesError::BadNetId(id.clone()));
            }
            if self.net[..i].iter().any(|n| &n.iface_id == id) {
                return Err(ResourcesError::DuplicateNetId(id.clone()));
            }
            let tap = &net.host_dev_name;
            if tap.is_empty()
                || tap.len() > 15
                || tap
                    .chars()
                    .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
            {
                return Err(ResourcesError::BadTapName(tap.clone()));
            }
            if self.net[..i].iter().any(|n| &n.host_dev_name == tap) {
                return Err(ResourcesError::DuplicateTap(tap.clone()));
            }
            if let Some(mac) = &net.guest_mac {
                crate::devices::virtio::net::parse_mac(mac)
                    .map_err(|_| ResourcesError::BadMac(mac.clone()))?;
            }
            let max = MAX_NET_QUEUE_PAIRS.min(u16::from(self.machine_config.vcpu_count));
            if !(1..=max.max(1)).contains(&net.queue_pairs) {
                return Err(ResourcesError::BadNetQueuePairs {
                    iface: id.clone(),
                    pairs: net.queue_pairs,
                    max: max.max(1),
                });
            }
        }
        Ok(())
    }

    /// The drives in the order they are attached: the root device first, then the rest
    /// as given. The n-th is `/dev/vd` + the n-th letter in the guest.
    pub fn drives_in_attach_order(&self) -> Vec<&DriveConfig> {
        let mut drives: Vec<&DriveConfig> = self.drives.iter().collect();
        drives.sort_by_key(|d| !d.is_root_device);
        drives
    }
}

impl VmResources {
    pub(super) fn validate_vsock(&self) -> Result<(), ResourcesError> {
        let Some(vsock) = &self.vsock else {
            return Ok(());
        };
        if vsock.guest_cid < 3 {
            return Err(ResourcesError::BadVsockCid(vsock.guest_cid));
        }
        let bad = |problem: &str| ResourcesError::BadVsockPath {
            path: vsock.uds_path.clone(),
            problem: problem.into(),
        };
        if vsock.uds_path.file_name().is_none() {
            return Err(bad("does not name a file"));
        }
        let dir = match vsock.uds_path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            return Err(bad("is in a directory that does not exist"));
        }
        Ok(())
    }
}

/// A disk must be a regular file or a block device. An empty file is a disk of no
/// sectors (a placeholder a snapshot's clones override with a real image).
fn check_disk(path: &Path) -> Result<(), ResourcesError> {
    use std::os::unix::fs::FileTypeExt;
    let bad = |problem: String| ResourcesError::BadFile {
        what: "drive",
        path: path.to_path_buf(),
        problem,
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(format!("cannot be read: {e}")))?;
    if meta.file_type().is_block_device() || meta.is_file() {
        return Ok(());
    }
    Err(bad("is not a regular file or a block device".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::tests::with_kernel;

    fn drive(id: &str, path: &Path, root: bool) -> DriveConfig {
        DriveConfig {
            drive_id: id.into(),
            path_on_host: path.into(),
            is_root_device: root,
            is_read_only: false,
            rate_limiter: None,
            io_engine: Default::default(),
        }
    }

    #[test]
    fn drives_are_validated() {
        let (disk, mut r) = with_kernel();
        r.drives = vec![
            drive("rootfs", disk.path(), true),
            drive("data_1", disk.path(), false),
        ];
        assert_eq!(r.validate(), Ok(()));
        r.drives[1].drive_id = "rootfs".into();
        assert_eq!(
            r.validate(),
            Err(ResourcesError::DuplicateDriveId("rootfs".into()))
        );
        r.drives[1].drive_id = "bad id".into();
        assert_eq!(
            r.validate(),
            Err(ResourcesError::BadDriveId("bad id".into()))
        );
        r.drives[1].drive_id = String::new();
        assert!(matches!(r.validate(), Err(ResourcesError::BadDriveId(_))));
        r.drives[1] = drive("data", disk.path(), true);
        assert_eq!(
            r.validate(),
            Err(ResourcesError::MultipleRootDevices(
                "rootfs".into(),
                "data".into()
            ))
        );
        let empty = tempfile::NamedTempFile::new().expect("tmp");
        r.drives[1] = drive("data", empty.path(), false);
        assert_eq!(r.validate(), Ok(()), "an empty file is a disk of 0 sectors");
        let dir = tempfile::tempdir().expect("dir");
        r.drives[1] = drive("data", dir.path(), false);
        let err = r.validate().expect_err("a directory");
        assert!(
            err.to_string()
                .ends_with("is not a regular file or a block device"),
            "{err}"
        );
        r.drives[1] = drive("data", Path::new("/nonexistent/disk.img"), false);
        let err = r.validate().expect_err("missing disk");
        assert!(
            err.to_string()
                .starts_with("drive '/nonexistent/disk.img' cannot be read"),
            "{err}"
        );
        r.drives = (0..=MAX_DRIVES)
            .map(|i| drive(&format!("d{i}"), disk.path(), false))
            .collect();
        assert!(matches!(
            r.validate(),
            Err(ResourcesError::TooManyDrives { .. })
        ));
    }

    #[test]
    fn root_drive_is_attached_first() {
        let (disk, mut r) = with_kernel();
        r.drives = vec![
            drive("a", disk.path(), false),
            drive("root", disk.path(), true),
            drive("b", disk.path(), false),
        ];
        let order: Vec<&str> = r
            .drives_in_attach_order()
            .iter()
            .map(|d| d.drive_id.as_str())
            .collect();
        assert_eq!(order, ["root", "a", "b"]);
    }

    #[test]
    fn drives_and_entropy_parse_from_json() {
        let json = r#"{"boot-source":{"kernel_image_path":"/k"},
            "drives":[{"drive_id":"rootfs","path_on_host":"/r.img","is_root_device":true,"is_read_only":true}],
            "entropy":{}}"#;
        let r: VmResources = serde_json::from_str(json).expect("valid");
        assert_eq!(r.drives.len(), 1);
        assert!(r.drives[0].is_read_only && r.drives[0].is_root_device);
        assert_eq!(r.entropy, Some(EntropyConfig {}));
        let bare: VmResources =
            serde_json::from_str(r#"{"boot-source":{"kernel_image_path":"/k"}}"#).expect("valid");
        assert!(bare.drives.is_empty() && bare.entropy.is_none());
        let bad = r#"{"boot-source":{"kernel_image_path":"/k"},"drives":[{"drive_id":"a","path_on_host":"/a","is_root_device":false,"cache":"x"}]}"#;
        assert!(serde_json::from_str::<VmResources>(bad).is_err());
        let bad = r#"{"boot-source":{"kernel_image_path":"/k"},"entropy":{"rate_limiter":{}}}"#;
        assert!(serde_json::from_str::<VmResources>(bad).is_err());
    }

    fn net(id: &str, tap: &str, mac: Option<&str>) -> NetConfig {
        NetConfig {
            iface_id: id.into(),
            host_dev_name: tap.into(),
            guest_mac: mac.map(Into::into),
            rx_rate_limiter: None,
            tx_rate_limiter: None,
            queue_pairs: 1,
        }
    }

    #[test]
    fn queue_pairs_are_opt_in_and_bounded_by_vcpus() {
        let (_f, mut r) = with_kernel();
        r.net = vec![net("eth0", "tap0", None)];
        let json = serde_json::to_string(&r.net[0]).expect("json");
        assert!(
            !json.contains("queue_pairs"),
            "one pair is left out: {json}"
        );
        r.machine_config.vcpu_count = 2;
        r.net[0].queue_pairs = 2;
        assert_eq!(r.validate(), Ok(()));
        let json = serde_json::to_string(&r.net[0]).expect("json");
        let back: NetConfig = serde_json::from_str(&json).expect("parse");
        assert_eq!(back.queue_pairs, 2);
        for (vcpus, pairs, max) in [
            (2, 3, 2),
            (2, 0, 2),
            (32, 9, MAX_NET_QUEUE_PAIRS),
            (1, 2, 1),
        ] {
            r.machine_config.vcpu_count = vcpus;
            r.net[0].queue_pairs = pairs;
            assert_eq!(
                r.validate(),
                Err(ResourcesError::BadNetQueuePairs {
                    iface: "eth0".into(),
                    pairs,
                    max
                }),
                "{vcpus} vCPUs, {pairs} pairs"
            );
        }
        let err = r.validate().expect_err("refused").to_string();
        assert!(err.contains("use 1 to 1"), "{err}");
    }

    #[test]
    fn network_interfaces_are_validated() {
        let (_f, mut r) = with_kernel();
        r.net = vec![
            net("eth0", "tap0", Some("02:00:00:00:00:01")),
            net("eth1", "tap-fifteen-chr", None),
        ];
        assert_eq!(r.validate(), Ok(()));
        r.net[1].iface_id = "eth0".into();
        assert_eq!(
            r.validate(),
            Err(ResourcesError::DuplicateNetId("eth0".into()))
        );
        r.net[1].iface_id = "eth 1".into();
        assert_eq!(r.validate(), Err(ResourcesError::BadNetId("eth 1".into())));
        r.net[1] = net("eth1", "tap-sixteen-chrs", None);
        assert_eq!(
            r.validate(),
            Err(ResourcesError::BadTapName("tap-sixteen-chrs".into()))
        );
        r.net[1] = net("eth1", "", None);
        assert!(matches!(r.validate(), Err(ResourcesError::BadTapName(_))));
        r.net[1] = net("eth1", "tap0", None);
        assert_eq!(
            r.validate(),
            Err(ResourcesError::DuplicateTap("tap0".into()))
        );
        r.net[1] = net("eth1", "tap1", Some("02:00:00:00:01"));
        assert_eq!(
            r.validate(),
            Err(ResourcesError::BadMac("02:00:00:00:01".into()))
        );
        r.net = (0..=MAX_NET_INTERFACES)
            .map(|i| net(&format!("e{i}"), &format!("t{i}"), None))
            .collect();
        assert!(matches!(
            r.validate(),
            Err(ResourcesError::TooManyNetInterfaces { .. })
        ));
    }

    #[test]
    fn network_interfaces_and_rate_limiters_parse_from_json() {
        let json = r#"{"boot-source":{"kernel_image_path":"/k"},
            "drives":[{"drive_id":"d","path_on_host":"/d","is_root_device":false,
                       "rate_limiter":{"bandwidth":{"size":1000,"refill_time":100}}}],
            "network-interfaces":[{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"02:00:00:00:00:01",
                       "rx_rate_limiter":{"ops":{"size":10,"one_time_burst":5,"refill_time":1000}}}]}"#;
        let r: VmResources = serde_json::from_str(json).expect("valid");
        let bw = r.drives[0]
            .rate_limiter
            .and_then(|l| l.bandwidth)
            .expect("bandwidth");
        assert_eq!(
            (bw.size, bw.one_time_burst, bw.refill_time),
            (1000, None, 100)
        );
        assert_eq!(r.net[0].host_dev_name, "tap0");
        assert_eq!(
            r.net[0]
                .rx_rate_limiter
                .and_then(|l| l.ops)
                .and_then(|o| o.one_time_burst),
            Some(5)
        );
        assert!(r.net[0].tx_rate_limiter.is_none());
        let back: VmResources =
            serde_json::from_str(&serde_json::to_string(&r).expect("json")).expect("round trip");
        assert_eq!(back, r);
        let bad = r#"{"boot-source":{"kernel_image_path":"/k"},"network-interfaces":[{"iface_id":"e","host_dev_name":"t","mtu":9000}]}"#;
        assert!(serde_json::from_str::<VmResources>(bad).is_err());
    }

    #[test]
    fn vsock_is_parsed_and_validated() {
        let (_f, mut r) = with_kernel();
        let dir = tempfile::tempdir().expect("dir");
        let json = format!(
            r#"{{"boot-source":{{"kernel_image_path":"/k"}},"vsock":{{"guest_cid":3,"uds_path":"{}/v.sock"}}}}"#,
            dir.path().display()
        );
        let parsed: VmResources = serde_json::from_str(&json).expect("valid");
        let vsock = parsed.vsock.expect("vsock");
        assert_eq!(
            (vsock.guest_cid, vsock.uds_path.clone()),
            (3, dir.path().join("v.sock"))
        );
        assert!(serde_json::from_str::<VmResources>(r#"{"boot-source":{"kernel_image_path":"/k"},"vsock":{"guest_cid":3,"uds_path":"/v","x":1}}"#).is_err());
        r.vsock = Some(vsock);
        assert_eq!(r.validate(), Ok(()));
        r.vsock = Some(VsockConfig {
            guest_cid: 2,
            uds_path: dir.path().join("v.sock"),
        });
        assert_eq!(r.validate(), Err(ResourcesError::BadVsockCid(2)));
        r.vsock = Some(VsockConfig {
            guest_cid: 3,
            uds_path: "/nonexistent/dir/v.sock".into(),
        });
        assert!(matches!(
            r.validate(),
            Err(ResourcesError::BadVsockPath { .. })
        ));
    }
}
