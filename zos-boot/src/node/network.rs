//! Node networks: a Linux bridge per network (`zvmbr-<hash>`, holding the network's first
//! address as the guests' gateway), one tap per VM interface attached to it, and guest
//! addresses allocated from the network's range. Links are managed with `ip` (iproute2).

use std::net::Ipv4Addr;
use std::process::Command;

/// Errors of this module.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetError {
    /// A `--network` definition is malformed.
    #[error("invalid network `{0}`: expected NAME=A.B.C.D/PREFIX with a prefix of 8 to 30")]
    BadDefinition(String),
    /// A requested address is not usable in the network.
    #[error("{ip} is not a usable guest address of network `{network}` ({range}; the first address is the gateway)")]
    OutOfRange {
        /// The address.
        ip: Ipv4Addr,
        /// The network.
        network: String,
        /// Its range.
        range: String,
    },
    /// A requested address is taken.
    #[error("{ip} is already used in network `{network}`")]
    Taken {
        /// The address.
        ip: Ipv4Addr,
        /// The network.
        network: String,
    },
    /// No free address left.
    #[error("network `{0}` has no free address left")]
    Exhausted(String),
    /// An `ip` command failed.
    #[error("`ip {args}` failed: {reason}")]
    Command {
        /// Its arguments.
        args: String,
        /// stderr or the spawn error.
        reason: String,
    },
}

/// A network the node serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkDef {
    /// Its name, as deployments refer to it.
    pub name: String,
    /// The network address.
    pub addr: Ipv4Addr,
    /// The prefix length.
    pub prefix: u8,
}

fn fnv(text: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The host tap of interface `index` of deployment `name` (at most 15 characters).
pub fn tap_name(deployment: &str, index: usize) -> String {
    format!("zvmt{:08x}{}", fnv(deployment), index % 10)
}

impl NetworkDef {
    /// Parses `NAME=A.B.C.D/PREFIX`.
    pub fn parse(text: &str) -> Result<NetworkDef, NetError> {
        let bad = || NetError::BadDefinition(text.to_string());
        let (name, cidr) = text.split_once('=').ok_or_else(bad)?;
        crate::node::spec::check_name("network", name).map_err(|_| bad())?;
        let (addr, prefix) = cidr.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - u32::from(prefix));
        Ok(NetworkDef {
            name: name.to_string(),
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }

    /// The bridge device (at most 15 characters).
    pub fn bridge(&self) -> String {
        format!("zvmbr-{:08x}", fnv(&self.name))
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix))
    }

    /// The bridge's address, the guests' gateway: the first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) + 1)
    }

    fn broadcast(&self) -> u32 {
        u32::from(self.addr) | !self.mask()
    }

    fn range(&self) -> String {
        format!("{}/{}", self.addr, self.prefix)
    }

    /// Whether `ip` may be given to a guest.
    pub fn usable(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        v & self.mask() == u32::from(self.addr)
            && v > u32::from(self.gateway())
            && v < self.broadcast()
    }

    /// Picks `wanted` (checked) or the lowest free address, given the `taken` ones.
    pub fn allocate(
        &self,
        wanted: Option<Ipv4Addr>,
        taken: &[Ipv4Addr],
    ) -> Result<Ipv4Addr, NetError> {
        if let Some(ip) = wanted {
            if !self.usable(ip) {
                return Err(NetError::OutOfRange {
                    ip,
                    network: self.name.clone(),
                    range: self.range(),
                });
            }
            if taken.contains(&ip) {
                return Err(NetError::Taken {
                    ip,
                    network: self.name.clone(),
                });
            }
            return Ok(ip);
        }
        (u32::from(self.gateway()) + 1..self.broadcast())
            .map(Ipv4Addr::from)
            .find(|ip| !taken.contains(ip))
            .ok_or_else(|| NetError::Exhausted(self.name.clone()))
    }
}

fn ip(args: &[&str]) -> Result<(), NetError> {
    let fail = |reason: String| NetError::Command {
        args: args.join(" "),
        reason,
    };
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| fail(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(fail(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// Whether link `name` exists in this thread's network namespace (asked with `ip`, not
/// /sys, which shows the namespace sysfs was mounted in).
fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Creates the network's bridge if needed, with the gateway address, and brings it up.
pub fn ensure_bridge(net: &NetworkDef) -> Result<String, NetError> {
    let br = net.bridge();
    if !link_exists(&br) {
        ip(&["link", "add", &br, "type", "bridge"])?;
    }
    ip(&[
        "addr",
        "replace",
        &format!("{}/{}", net.gateway(), net.prefix),
        "dev",
        &br,
    ])?;
    ip(&["link", "set", &br, "up"])?;
    Ok(br)
}

/// Creates tap `tap` if needed, attaches it to `bridge` and brings it up.
pub fn ensure_tap(tap: &str, bridge: &str) -> Result<(), NetError> {
    if !link_exists(tap) {
        ip(&["tuntap", "add", "dev", tap, "mode", "tap"])?;
    }
    ip(&["link", "set", tap, "master", bridge, "up"])
}

/// Deletes tap `tap` (absent is fine).
pub fn delete_tap(tap: &str) -> Result<(), NetError> {
    if link_exists(tap) {
        ip(&["link", "del", tap])?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn definitions_and_allocation() {
        let n = NetworkDef::parse("lan=10.20.0.77/24").unwrap();
        assert_eq!(n.addr, Ipv4Addr::new(10, 20, 0, 0));
        assert_eq!(n.gateway(), Ipv4Addr::new(10, 20, 0, 1));
        assert!(n.bridge().len() <= 15 && n.bridge().starts_with("zvmbr-"));
        assert!(tap_name("a-very-long-deployment-name", 3).len() <= 15);
        for bad in [
            "lan",
            "lan=10.0.0.0",
            "lan=10.0.0.0/31",
            "lan=300.0.0.0/24",
            "../x=10.0.0.0/24",
        ] {
            assert!(NetworkDef::parse(bad).is_err(), "{bad}");
        }
        let first = n.allocate(None, &[]).unwrap();
        assert_eq!(first, Ipv4Addr::new(10, 20, 0, 2));
        assert_eq!(
            n.allocate(None, &[first]).unwrap(),
            Ipv4Addr::new(10, 20, 0, 3)
        );
        assert_eq!(
            n.allocate(Some(first), &[first]),
            Err(NetError::Taken {
                ip: first,
                network: "lan".into()
            })
        );
        for ip in ["10.20.0.1", "10.20.0.0", "10.20.0.255", "10.21.0.5"] {
            assert!(
                matches!(
                    n.allocate(Some(ip.parse().unwrap()), &[]),
                    Err(NetError::OutOfRange { .. })
                ),
                "{ip}"
            );
        }
        let small = NetworkDef::parse("s=192.168.9.0/30").unwrap();
        let only = small.allocate(None, &[]).unwrap();
        assert_eq!(
            small.allocate(None, &[only]),
            Err(NetError::Exhausted("s".into()))
        );
    }

    /// Creates a bridge and a tap inside a network namespace this test makes.
    #[test]
    fn bridge_and_tap_in_a_private_netns() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || Command::new("ip").arg("-V").output().is_err() {
            eprintln!("skipped: needs root and iproute2 to create a network namespace");
            return;
        }
        let ns = format!("zvmnodetest-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        ip(&["netns", "add", &ns]).unwrap();
        let path = format!("/var/run/netns/{ns}");
        let result = std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on this thread with a valid namespace fd.
            assert_eq!(
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) },
                0
            );
            let net = NetworkDef::parse("lan=10.77.0.0/24").unwrap();
            let br = ensure_bridge(&net).unwrap();
            assert_eq!(ensure_bridge(&net).unwrap(), br, "idempotent");
            let tap = tap_name("web", 0);
            ensure_tap(&tap, &br).unwrap();
            ensure_tap(&tap, &br).unwrap();
            let show = Command::new("ip")
                .args(["-o", "link", "show", &tap])
                .output()
                .unwrap();
            let show = String::from_utf8_lossy(&show.stdout).to_string();
            let addr = Command::new("ip")
                .args(["-o", "-4", "addr", "show", &br])
                .output()
                .unwrap();
            let addr = String::from_utf8_lossy(&addr.stdout).to_string();
            delete_tap(&tap).unwrap();
            delete_tap(&tap).unwrap();
            (show, addr, link_exists(&tap))
        })
        .join();
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        let (show, addr, tap_left) = result.unwrap();
        assert!(
            show.contains(&format!(
                "master {}",
                NetworkDef::parse("lan=10.77.0.0/24").unwrap().bridge()
            )),
            "{show}"
        );
        assert!(addr.contains("10.77.0.1/24"), "{addr}");
        assert!(!tap_left);
    }
}
