//! [`RequestBody::Network`](crate::RequestBody::Network): the network configuration of a
//! VM restored from a template. The template's guest probed its interfaces with the
//! template's MAC addresses and no address; each clone's host tells its agent the MAC,
//! address and gateway of each interface. Both ends check a request with [`check`].

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// Most interfaces one request configures.
pub const NETWORK_INTERFACES_MAX: usize = 8;
/// Longest interface name Linux accepts (`IFNAMSIZ` less the NUL).
pub const INTERFACE_NAME_MAX: usize = 15;

/// One interface of the guest, as the clone must have it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetInterface {
    /// Its name in the guest (`eth0`, ...): ASCII letters, digits, `_` and `-`, 1 to
    /// [`INTERFACE_NAME_MAX`] bytes.
    pub name: String,
    /// Its MAC address: unicast, not all zeros.
    pub mac: [u8; 6],
    /// Its IPv4 address and prefix length (0 to 32), if it has one.
    #[serde(default)]
    pub address: Option<(Ipv4Addr, u8)>,
    /// The default route's gateway through it, if any: inside `address`'s network (which
    /// it needs).
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= INTERFACE_NAME_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && name != "lo";
    if ok {
        Ok(())
    } else {
        Err(format!(
            "network: interface name {name:?} is not 1 to {INTERFACE_NAME_MAX} letters, digits, '_' or '-' (nor lo)"
        ))
    }
}

fn in_network(ip: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    let mask = match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    };
    u32::from(ip) & mask == u32::from(net) & mask
}

/// Checks a request before anything changes: at most [`NETWORK_INTERFACES_MAX`]
/// interfaces, each named once and validly, a unicast non-zero MAC used once, a prefix of
/// 0 to 32, an address that is not unspecified, multicast or broadcast, a gateway only with
/// an address and inside its network, and one default route at most.
pub fn check(interfaces: &[NetInterface]) -> Result<(), String> {
    if interfaces.is_empty() || interfaces.len() > NETWORK_INTERFACES_MAX {
        return Err(format!(
            "network: {} interfaces, want 1 to {NETWORK_INTERFACES_MAX}",
            interfaces.len()
        ));
    }
    let mut gateways = 0;
    for (i, iface) in interfaces.iter().enumerate() {
        check_name(&iface.name)?;
        let name = &iface.name;
        if interfaces[..i].iter().any(|o| &o.name == name) {
            return Err(format!("network: interface {name:?} is named twice"));
        }
        if iface.mac[0] & 1 != 0 || iface.mac == [0; 6] {
            return Err(format!(
                "network: {name}: MAC {} is not a unicast address",
                format_mac(&iface.mac)
            ));
        }
        if interfaces[..i].iter().any(|o| o.mac == iface.mac) {
            return Err(format!(
                "network: MAC {} is given twice",
                format_mac(&iface.mac)
            ));
        }
        if let Some((ip, prefix)) = iface.address {
            if prefix > 32 {
                return Err(format!("network: {name}: prefix /{prefix} is over 32"));
            }
            if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
                return Err(format!("network: {name}: {ip} is not a host address"));
            }
        }
        if let Some(gw) = iface.gateway {
            gateways += 1;
            let Some((ip, prefix)) = iface.address else {
                return Err(format!("network: {name}: a gateway without an address"));
            };
            if gw == ip || !in_network(gw, ip, prefix) || gw.is_unspecified() {
                return Err(format!(
                    "network: {name}: gateway {gw} is not another host of {ip}/{prefix}"
                ));
            }
        }
    }
    if gateways > 1 {
        return Err("network: more than one default gateway".into());
    }
    Ok(())
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn eth(n: u8) -> NetInterface {
        NetInterface {
            name: format!("eth{n}"),
            mac: [2, 0, 0, 0, 0, n + 1],
            address: Some((Ipv4Addr::new(10, 0, n, 5), 24)),
            gateway: None,
        }
    }

    #[test]
    fn a_usual_request_passes() {
        let mut first = eth(0);
        first.gateway = Some(Ipv4Addr::new(10, 0, 0, 1));
        check(&[first, eth(1)]).unwrap();
        let mut bare = eth(0);
        bare.address = None;
        check(&[bare]).unwrap();
    }

    #[test]
    fn hostile_requests_are_refused() {
        let refused = |change: &dyn Fn(&mut Vec<NetInterface>), why: &str| {
            let mut v = vec![eth(0), eth(1)];
            change(&mut v);
            let e = check(&v).unwrap_err();
            assert!(e.contains(why), "{why}: {e}");
        };
        refused(&|v| v.clear(), "0 interfaces");
        refused(&|v| v.extend((2..9).map(eth)), "9 interfaces");
        for bad in [
            "",
            "lo",
            "eth0/x",
            "a-very-long-name0",
            "eth 0",
            "ëth0",
            "eth0\0",
        ] {
            refused(&|v| v[0].name = bad.into(), "interface name");
        }
        refused(&|v| v[1].name = "eth0".into(), "named twice");
        refused(&|v| v[0].mac = [1, 0, 0, 0, 0, 1], "unicast");
        refused(&|v| v[0].mac = [0; 6], "unicast");
        refused(&|v| v[1].mac = v[0].mac, "given twice");
        refused(
            &|v| v[0].address = Some((Ipv4Addr::new(10, 0, 0, 5), 33)),
            "over 32",
        );
        for ip in [
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::BROADCAST,
            Ipv4Addr::new(224, 0, 0, 1),
        ] {
            refused(&|v| v[0].address = Some((ip, 24)), "host address");
        }
        refused(
            &|v| {
                v[0].address = None;
                v[0].gateway = Some(Ipv4Addr::new(10, 0, 0, 1));
            },
            "without an address",
        );
        refused(
            &|v| v[0].gateway = Some(Ipv4Addr::new(10, 9, 9, 1)),
            "not another host",
        );
        refused(
            &|v| v[0].gateway = Some(Ipv4Addr::new(10, 0, 0, 5)),
            "not another host",
        );
        refused(
            &|v| {
                v[0].gateway = Some(Ipv4Addr::new(10, 0, 0, 1));
                v[1].gateway = Some(Ipv4Addr::new(10, 0, 1, 1));
            },
            "more than one",
        );
    }

    #[test]
    fn macs_print_as_usual() {
        assert_eq!(
            format_mac(&[2, 0xab, 0, 1, 0x10, 0xff]),
            "02:ab:00:01:10:ff"
        );
    }
}
