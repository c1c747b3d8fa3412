//! Template shapes with network interfaces and data disks.
//!
//! A container VM with N network interfaces and M data disks (after the agent's and the
//! container's disks) restores from a template made with N interfaces on taps of its own
//! (opened for the build only, with placeholder MACs, no address) and M empty placeholder
//! disks; the key counts both. Each clone gets its own taps and disk files as restore
//! overrides (the VMM tells the guest each disk's new capacity), and, through its agent
//! ([`agent_protocol::RequestBody::Network`]), each interface's MAC, address and gateway:
//! what a booted VM's kernel would have taken from `ip=` on its command line (and its
//! agent from `zvm.ip.<interface>=`), which is why such words are the only ones a clone's
//! command line may add to the template's.

use agent_protocol::network::{NetInterface, NETWORK_INTERFACES_MAX};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use vmm::resources::{DriveConfig, NetConfig};
use vmm::VmResources;

/// Most data disks a template has (the agent's and the container's come first: the last
/// one is `/dev/vdj`).
pub const DATA_DISKS_MAX: usize = 8;

/// The template's id of data disk `index`.
pub fn template_drive_id(index: usize) -> String {
    format!("data{index}")
}

/// The template's id of network interface `index`.
pub fn template_iface_id(index: usize) -> String {
    format!("eth{index}")
}

/// The placeholder MAC of the template's interface `index`; every clone sets its own.
pub fn template_mac(index: usize) -> [u8; 6] {
    [0x02, 0x7a, 0x76, 0x6d, 0x00, index as u8]
}

/// A restore override of a drive: `(drive id, backing file)`.
pub type DriveOverride = (String, PathBuf);
/// A restore override of a network interface: `(interface id, host tap)`.
pub type TapOverride = (String, String);

/// What a clone has beyond the template's plain shape: its interfaces and data disks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extras<'a> {
    /// The clone's network interfaces (their taps), in the guest's order.
    pub nets: &'a [NetConfig],
    /// The clone's data disks (their files), in the guest's order.
    pub data_disks: &'a [DriveConfig],
}

impl<'a> Extras<'a> {
    /// No interface, no data disk.
    pub const NONE: Extras<'static> = Extras {
        nets: &[],
        data_disks: &[],
    };

    /// The interfaces and data disks of `resources` (whose first two drives are the
    /// agent's and the container's), if a template can have them: at most
    /// [`NETWORK_INTERFACES_MAX`] interfaces without rate limiters, at most
    /// [`DATA_DISKS_MAX`] read-write data disks without rate limiters on the default I/O
    /// engine; else why not.
    pub fn of(resources: &'a VmResources) -> Result<Extras<'a>, String> {
        let data_disks = resources.drives.get(2..).unwrap_or_default();
        let nets = resources.net.as_slice();
        if nets.len() > NETWORK_INTERFACES_MAX {
            return Err(format!(
                "{} network interfaces (a template has {NETWORK_INTERFACES_MAX} at most)",
                nets.len()
            ));
        }
        if nets
            .iter()
            .any(|n| n.rx_rate_limiter.is_some() || n.tx_rate_limiter.is_some())
        {
            return Err("a network interface with a rate limiter".into());
        }
        if data_disks.len() > DATA_DISKS_MAX {
            return Err(format!(
                "{} data disks (a template has {DATA_DISKS_MAX} at most)",
                data_disks.len()
            ));
        }
        if data_disks.iter().any(|d| {
            d.is_read_only
                || d.is_root_device
                || d.rate_limiter.is_some()
                || d.io_engine != Default::default()
        }) {
            return Err(
                "a data disk that is read-only, the root, rate-limited or on another I/O engine"
                    .into(),
            );
        }
        Ok(Extras { nets, data_disks })
    }

    /// Gives the template VM `resources` of this shape its interfaces (on taps of the
    /// build's own, which live as long as the build VM: no traffic reaches them) and its
    /// data disks (empty files in `dir`); returns the files to remove after the build.
    pub(super) fn add_to_template(
        &self,
        resources: &mut VmResources,
        dir: &Path,
    ) -> Result<Vec<PathBuf>, super::TemplateError> {
        let mut scratch = Vec::new();
        for i in 0..self.data_disks.len() {
            let placeholder = dir.join(format!("{}.placeholder", template_drive_id(i)));
            std::fs::write(&placeholder, b"").map_err(|source| super::TemplateError::Io {
                what: format!("create {}", placeholder.display()),
                source,
            })?;
            resources.drives.push(DriveConfig {
                drive_id: template_drive_id(i),
                path_on_host: placeholder.clone(),
                is_root_device: false,
                is_read_only: false,
                rate_limiter: None,
                io_engine: Default::default(),
            });
            scratch.push(placeholder);
        }
        resources.net = (0..self.nets.len())
            .map(|i| NetConfig {
                iface_id: template_iface_id(i),
                host_dev_name: build_tap(dir, i),
                guest_mac: Some(agent_protocol::network::format_mac(&template_mac(i))),
                rx_rate_limiter: None,
                tx_rate_limiter: None,
                queue_pairs: 1,
            })
            .collect();
        Ok(scratch)
    }

    /// The restore overrides that give a clone of the template its own data disks and
    /// taps: `(drives, net)` by the template's ids.
    pub(super) fn overrides(&self) -> (Vec<DriveOverride>, Vec<TapOverride>) {
        let drives = self
            .data_disks
            .iter()
            .enumerate()
            .map(|(i, d)| (template_drive_id(i), d.path_on_host.clone()))
            .collect();
        let net = self
            .nets
            .iter()
            .enumerate()
            .map(|(i, n)| (template_iface_id(i), n.host_dev_name.clone()))
            .collect();
        (drives, net)
    }
}

/// Makes sure the template `vm` restores from exists (ahead of its first clone, as
/// [`super::prepare_template_flavour`] does for the plain shapes): returns its id and,
/// when this call built it, how long that took.
pub fn prepare_template_for(
    cache: &super::TemplateCache,
    vm: &super::ContainerVm<'_>,
) -> Result<(String, Option<std::time::Duration>), super::TemplateError> {
    let key = vm.key(cache)?;
    let id = key.id();
    {
        let _shared = cache.lock(&id, false, super::BUILD_WAIT)?;
        if let Ok(Some(_)) = cache.find(&id, &key) {
            return Ok((id, None));
        }
    }
    let _exclusive = cache.lock(&id, true, super::BUILD_WAIT)?;
    if let Ok(Some(_)) = cache.find(&id, &key) {
        return Ok((id, None));
    }
    let took = super::build_and_install(cache, &id, &key, vm)?;
    Ok((id, Some(took)))
}

/// The words `boot_args` adds to the template's `base` command line, when they are only
/// network and mount notes a clone can do without (`ip=`, `zvm.ip.*=`, `zvm.mount.*=`),
/// added at its end; None otherwise (another command line: no template fits).
pub fn added_network_words<'b>(base: &str, boot_args: &'b str) -> Option<Vec<&'b str>> {
    let rest = boot_args.strip_prefix(base)?;
    if !rest.is_empty() && !rest.starts_with(' ') {
        return None;
    }
    let words: Vec<&str> = rest.split_whitespace().collect();
    words
        .iter()
        .all(|w| {
            w.starts_with("ip=")
                || w.strip_prefix("zvm.ip.")
                    .or_else(|| w.strip_prefix("zvm.mount."))
                    .is_some_and(|r| r.contains('='))
        })
        .then_some(words)
}

/// The settings of `resources` that differ from `expected`'s, named as in their JSON (a
/// section's own fields when both have it), for the log line that says why a VM boots.
pub fn differences(resources: &VmResources, expected: &VmResources) -> String {
    use serde_json::Value;
    fn walk(a: &Value, b: &Value, path: &str, depth: usize, out: &mut Vec<String>) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) if depth < 2 => {
                let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    let (x, y) = (a.get(k), b.get(k));
                    if x != y {
                        let inner = if path.is_empty() {
                            k.clone()
                        } else {
                            format!("{path}.{k}")
                        };
                        walk(
                            x.unwrap_or(&Value::Null),
                            y.unwrap_or(&Value::Null),
                            &inner,
                            depth + 1,
                            out,
                        );
                    }
                }
            }
            _ => out.push(path.to_string()),
        }
    }
    let (Ok(a), Ok(b)) = (
        serde_json::to_value(resources),
        serde_json::to_value(expected),
    ) else {
        return String::new();
    };
    let mut out = Vec::new();
    walk(&a, &b, "", 0, &mut out);
    out.join(", ")
}

/// A random locally administered unicast MAC.
fn random_mac() -> Result<[u8; 6], String> {
    let bytes = crate::sandbox::agent::os_random(6).map_err(|e| format!("getrandom: {e}"))?;
    let mut mac = [0u8; 6];
    mac.copy_from_slice(bytes.get(..6).ok_or("getrandom: short read")?);
    mac[0] = (mac[0] & 0xfe) | 0x02;
    Ok(mac)
}

/// `ip=<client>:<server>:<gw>:<netmask>:<host>:<device>:<autoconf>` (the static form
/// zvm writes) -> (interface, address, prefix, gateway).
fn parse_ip_arg(value: &str) -> Result<(String, Ipv4Addr, u8, Option<Ipv4Addr>), String> {
    let bad = || format!("ip={value}: expected <client>::<gw>:<netmask>::<device>:off");
    let fields: Vec<&str> = value.split(':').collect();
    let [client, _server, gw, mask, _host, device, ..] = fields.as_slice() else {
        return Err(bad());
    };
    let ip: Ipv4Addr = client.parse().map_err(|_| bad())?;
    let mask: u32 = mask.parse::<Ipv4Addr>().map_err(|_| bad())?.into();
    if mask.leading_ones() + mask.trailing_zeros() != 32 {
        return Err(bad());
    }
    let gateway = match *gw {
        "" => None,
        g => Some(g.parse().map_err(|_| bad())?),
    };
    let device = if device.is_empty() { "eth0" } else { device };
    Ok((device.to_string(), ip, mask.leading_ones() as u8, gateway))
}

/// What a clone's agent must set on its interfaces: for each of `resources`' interfaces
/// (`eth0`, `eth1`, ... in order), its MAC (the configured one, else a random one: clones
/// never share the template's) and the address and gateway its command line's `ip=` or
/// `zvm.ip.<interface>=` words give it. Empty without interfaces.
pub fn guest_network(resources: &VmResources) -> Result<Vec<NetInterface>, String> {
    let mut interfaces = Vec::with_capacity(resources.net.len());
    for (i, net) in resources.net.iter().enumerate() {
        let mac = match &net.guest_mac {
            Some(text) => vmm::devices::virtio::net::parse_mac(text).map_err(|e| e.to_string())?,
            None => random_mac()?,
        };
        interfaces.push(NetInterface {
            name: format!("eth{i}"),
            mac,
            address: None,
            gateway: None,
        });
    }
    let find = |interfaces: &mut Vec<NetInterface>, name: &str| {
        let found = interfaces.iter().position(|n| n.name == name);
        found.ok_or_else(|| format!("the command line configures {name}, which the VM lacks"))
    };
    for word in resources.boot_args().split_whitespace() {
        if let Some(value) = word.strip_prefix("ip=") {
            let (name, ip, prefix, gateway) = parse_ip_arg(value)?;
            let at = find(&mut interfaces, &name)?;
            interfaces[at].address = Some((ip, prefix));
            interfaces[at].gateway = gateway;
        } else if let Some(rest) = word.strip_prefix("zvm.ip.") {
            let bad = || format!("{word}: expected zvm.ip.<interface>=<address>/<prefix>");
            let (name, value) = rest.split_once('=').ok_or_else(bad)?;
            let (ip, prefix) = value.split_once('/').ok_or_else(bad)?;
            let at = find(&mut interfaces, name)?;
            interfaces[at].address = Some((
                ip.parse().map_err(|_| bad())?,
                prefix.parse().map_err(|_| bad())?,
            ));
        }
    }
    if !interfaces.is_empty() {
        agent_protocol::network::check(&interfaces)?;
    }
    Ok(interfaces)
}

/// The tap the template build of `dir` uses for its interface `index` (at most 15
/// characters, unique per build directory).
pub(super) fn build_tap(dir: &Path, index: usize) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in dir.as_os_str().as_encoded_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("zvmtpl{h:08x}{}", index % 10)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "shape_tests.rs"]
mod tests;
