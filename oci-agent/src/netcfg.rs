//! Addresses of the VM's further network interfaces. Linux configures one interface from
//! the kernel's `ip=` setting before init runs; zvm's node announces the others on the
//! command line as `zvm.ip.<interface>=<address>/<prefix>` (e.g. `zvm.ip.eth1=10.0.1.5/24`),
//! and the agent, as PID 1, gives each its address and brings it up before any container
//! starts (containers share the VM's network).

use std::io;
use std::net::Ipv4Addr;

use crate::sys::check;

/// One interface address from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAddress {
    /// Interface name (at most 15 bytes).
    pub interface: String,
    /// Its address.
    pub address: Ipv4Addr,
    /// Prefix length (0 to 32).
    pub prefix: u8,
}

/// The `zvm.ip.*` words of a kernel command line; malformed ones are returned apart, as
/// messages, so that PID 1 can report them and go on.
pub fn parse_cmdline(cmdline: &str) -> (Vec<InterfaceAddress>, Vec<String>) {
    let mut found = Vec::new();
    let mut bad = Vec::new();
    for word in cmdline.split_whitespace() {
        let Some(rest) = word.strip_prefix("zvm.ip.") else {
            continue;
        };
        let parsed = rest.split_once('=').and_then(|(interface, value)| {
            let (addr, prefix) = value.split_once('/')?;
            let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
            let ok_name = !interface.is_empty()
                && interface.len() < libc::IFNAMSIZ
                && interface
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            ok_name.then_some(())?;
            Some(InterfaceAddress {
                interface: interface.to_string(),
                address: addr.parse().ok()?,
                prefix,
            })
        });
        match parsed {
            Some(a) => found.push(a),
            None => bad.push(format!(
                "ignoring `{word}`: expected zvm.ip.<interface>=<IPv4 address>/<prefix>"
            )),
        }
    }
    (found, bad)
}

/// The netmask of a prefix length.
pub fn netmask(prefix: u8) -> Ipv4Addr {
    let bits = match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    };
    Ipv4Addr::from(bits)
}

fn sockaddr(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; every bit pattern is valid.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Gives `a.interface` its address and netmask and brings it up.
pub fn apply(a: &InterfaceAddress) -> io::Result<()> {
    // SAFETY: socket(2) with constant arguments.
    let fd = check(
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) }.into(),
    )? as i32;
    // SAFETY: a zeroed ifreq is valid; the name is copied in NUL-terminated (parse_cmdline
    // keeps names shorter than IFNAMSIZ); each ioctl reads or writes only the ifreq.
    let result = unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req.ifr_name.iter_mut().zip(a.interface.bytes()) {
            *d = s as libc::c_char;
        }
        let run = |request: libc::c_ulong, req: &mut libc::ifreq| -> io::Result<()> {
            check(libc::ioctl(fd, request, req as *mut libc::ifreq).into()).map(|_| ())
        };
        req.ifr_ifru.ifru_addr = sockaddr(a.address);
        run(libc::SIOCSIFADDR, &mut req)
            .and_then(|()| {
                req.ifr_ifru.ifru_netmask = sockaddr(netmask(a.prefix));
                run(libc::SIOCSIFNETMASK, &mut req)
            })
            .and_then(|()| run(libc::SIOCGIFFLAGS, &mut req))
            .and_then(|()| {
                req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
                run(libc::SIOCSIFFLAGS, &mut req)
            })
    };
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(fd) };
    result
}

/// An ifreq naming `name` (checked by the caller: shorter than IFNAMSIZ).
fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: a zeroed ifreq is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req
}

/// A datagram socket for interface ioctls, closed on drop.
fn ioctl_socket() -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: socket(2) with constant arguments.
    let fd = check(
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) }.into(),
    )? as i32;
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

fn ifioctl(
    fd: &std::os::fd::OwnedFd,
    request: libc::c_ulong,
    req: &mut libc::ifreq,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: each request used here reads or writes only the ifreq.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), request, req as *mut libc::ifreq) }.into())
        .map(|_| ())
}

/// Configures one interface of a VM restored from a template
/// ([`agent_protocol::RequestBody::Network`], already checked): down, its MAC, its address
/// and netmask, up, and the default route through its gateway. Each failure names its
/// step; the interface may be left down.
pub fn configure(iface: &agent_protocol::network::NetInterface) -> Result<(), String> {
    let name = &iface.name;
    let step = |what: &str| {
        let what = what.to_string();
        move |e: io::Error| format!("network: {name}: {what}: {e}")
    };
    let fd = ioctl_socket().map_err(step("open a socket"))?;
    let mut req = ifreq(name);
    ifioctl(&fd, libc::SIOCGIFFLAGS, &mut req).map_err(step("read its flags"))?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags & !(libc::IFF_UP as libc::c_short);
    ifioctl(&fd, libc::SIOCSIFFLAGS, &mut req).map_err(step("bring it down"))?;
    let mut hw = ifreq(name);
    // SAFETY: writing plain data into the union's sockaddr member.
    unsafe {
        hw.ifr_ifru.ifru_hwaddr.sa_family = libc::ARPHRD_ETHER;
        for (d, s) in hw.ifr_ifru.ifru_hwaddr.sa_data.iter_mut().zip(iface.mac) {
            *d = s as libc::c_char;
        }
    }
    ifioctl(&fd, libc::SIOCSIFHWADDR, &mut hw).map_err(step("set its MAC"))?;
    if let Some((ip, prefix)) = iface.address {
        let mut a = ifreq(name);
        a.ifr_ifru.ifru_addr = sockaddr(ip);
        ifioctl(&fd, libc::SIOCSIFADDR, &mut a).map_err(step("set its address"))?;
        a.ifr_ifru.ifru_netmask = sockaddr(netmask(prefix));
        ifioctl(&fd, libc::SIOCSIFNETMASK, &mut a).map_err(step("set its netmask"))?;
    }
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    ifioctl(&fd, libc::SIOCSIFFLAGS, &mut req).map_err(step("bring it up"))?;
    if let Some(gw) = iface.gateway {
        add_default_route(&fd, name, gw).map_err(step("add the default route"))?;
    }
    Ok(())
}

fn add_default_route(fd: &std::os::fd::OwnedFd, name: &str, gw: Ipv4Addr) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut dev: Vec<libc::c_char> = name.bytes().map(|b| b as libc::c_char).collect();
    dev.push(0);
    // SAFETY: a zeroed rtentry is valid; the fields are plain data but rt_dev, which points
    // at `dev`, alive and NUL-terminated for the call.
    let result = unsafe {
        let mut rt: libc::rtentry = std::mem::zeroed();
        rt.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
        rt.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
        rt.rt_gateway = sockaddr(gw);
        rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        rt.rt_dev = dev.as_mut_ptr();
        libc::ioctl(
            fd.as_raw_fd(),
            libc::SIOCADDRT,
            &mut rt as *mut libc::rtentry,
        )
    };
    match check(result.into()) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other.map(|_| ()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn words_are_parsed_and_bad_ones_reported() {
        let (found, bad) = parse_cmdline(
            "console=ttyS0 ip=10.0.0.2::10.0.0.1:255.255.255.0::eth0:off zvm.ip.eth1=10.0.1.5/24 \
             zvm.ip.eth2=300.1.1.1/24 zvm.ip.eth3=10.0.3.1 zvm.ip.averyveryverylongname=1.2.3.4/8 zvm.mount.data=/data",
        );
        assert_eq!(
            found,
            [InterfaceAddress {
                interface: "eth1".into(),
                address: Ipv4Addr::new(10, 0, 1, 5),
                prefix: 24
            }]
        );
        assert_eq!(bad.len(), 3, "{bad:?}");
        assert!(bad[0].contains("zvm.ip.eth2"), "{bad:?}");
    }

    #[test]
    fn netmasks() {
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(0), Ipv4Addr::new(0, 0, 0, 0));
        assert_eq!(netmask(32), Ipv4Addr::new(255, 255, 255, 255));
        assert_eq!(netmask(17), Ipv4Addr::new(255, 255, 128, 0));
    }

    #[test]
    fn configuring_a_missing_interface_is_an_error_not_a_crash() {
        let e = configure(&agent_protocol::network::NetInterface {
            name: "zvmnoif0".into(),
            mac: [2, 0, 0, 0, 0, 1],
            address: Some((Ipv4Addr::new(10, 9, 9, 9), 24)),
            gateway: Some(Ipv4Addr::new(10, 9, 9, 1)),
        })
        .unwrap_err();
        assert!(e.contains("zvmnoif0: read its flags"), "{e}");
    }

    #[test]
    fn a_missing_interface_is_an_error_not_a_crash() {
        let e = apply(&InterfaceAddress {
            interface: "zvmnoif0".into(),
            address: Ipv4Addr::new(10, 9, 9, 9),
            prefix: 24,
        })
        .unwrap_err();
        // ENODEV without the device, EPERM when not allowed to try.
        assert!(
            matches!(e.raw_os_error(), Some(libc::ENODEV) | Some(libc::EPERM)),
            "{e}"
        );
    }
}
