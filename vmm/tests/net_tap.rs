//! Host-level test of the virtio-net tap backend: in a network namespace of its own, a
//! frame written through [`Tap`] reaches a raw packet socket on the interface, and a frame
//! sent on the socket comes out of [`Tap`] with a vnet header. Skipped unless root with
//! /dev/net/tun and iproute2.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};
use vmm::devices::virtio::net::tap::Tap;
use vmm::devices::virtio::net::{NetBackend, VNET_HDR_LEN};

const ETHERTYPE: u16 = 0x88b5; // IEEE local experimental
const TAP: &str = "zvmtap0";

/// A network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn create() -> Option<Netns> {
        // Tests run in parallel: each gets a namespace of its own.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("zvmtest-{}-{n}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then_some(Netns(name))
    }

    fn exec(&self, args: &[&str]) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Moves the calling thread into the namespace.
    fn enter(&self) -> std::io::Result<()> {
        let file = std::fs::File::open(format!("/var/run/netns/{}", self.0))?;
        // SAFETY: setns on a namespace fd we own; affects only this thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn usable() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ip = Command::new("ip")
        .arg("-V")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    root && ip && std::path::Path::new("/dev/net/tun").exists()
}

/// A packet socket for our ethertype bound to `ifindex`, with a receive timeout.
fn packet_socket(ifindex: i32) -> OwnedFd {
    let proto = ETHERTYPE.to_be();
    // SAFETY: plain socket call; checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    assert!(
        fd >= 0,
        "packet socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` is new and ours.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let addr = sockaddr(ifindex);
    // SAFETY: binding to a valid sockaddr_ll of the right length.
    let rc = unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
    let tv = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    // SAFETY: setting SO_RCVTIMEO from a valid timeval.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    sock
}

fn sockaddr(ifindex: i32) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain data; zero is a valid start.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETHERTYPE.to_be();
    addr.sll_ifindex = ifindex;
    addr.sll_halen = 6;
    addr
}

fn ether_frame(src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend(src);
    f.extend(ETHERTYPE.to_be_bytes());
    f.extend(payload);
    f
}

#[test]
fn frames_cross_the_tap_both_ways() {
    if !usable() {
        eprintln!("skipped: needs root, iproute2 and /dev/net/tun");
        return;
    }
    let Some(ns) = Netns::create() else {
        eprintln!("skipped: cannot create a network namespace");
        return;
    };
    let ns = std::sync::Arc::new(ns);
    let worker = {
        let ns = ns.clone();
        std::thread::spawn(move || {
            ns.enter().expect("setns");
            let mut tap = Tap::open(TAP).expect("open tap");
            assert_eq!(tap.name(), TAP);
            assert!(ns.exec(&["ip", "link", "set", TAP, "up"]), "link up");
            let name = std::ffi::CString::new(TAP).expect("name");
            // SAFETY: a valid C string; the lookup runs in this thread's namespace.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
            assert!(ifindex > 0, "the tap exists in the namespace");
            let sock = packet_socket(ifindex);

            // Guest -> host: a vnet header and a frame written to the tap.
            let out = ether_frame(
                [2, 0, 0, 0, 0, 1],
                b"from the guest, via zvm's tap backend, padded to sixty bytes",
            );
            let mut with_hdr = vec![0u8; VNET_HDR_LEN];
            with_hdr.extend(&out);
            tap.write_frame(&with_hdr).expect("tap write");
            let mut buf = vec![0u8; 2048];
            // SAFETY: receiving into our own buffer.
            let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            assert!(
                n > 0,
                "the frame reached the interface: {}",
                std::io::Error::last_os_error()
            );
            assert_eq!(
                &buf[..n as usize],
                &out[..],
                "the header was consumed, the frame intact"
            );

            // Host -> guest: a frame sent on the interface comes out of the tap.
            let back = ether_frame(
                [2, 0, 0, 0, 0, 2],
                b"from the host side of the tap, also padded to sixty bytes..",
            );
            let addr = sockaddr(ifindex);
            // SAFETY: sending our buffer to a valid sockaddr_ll.
            let sent = unsafe {
                libc::sendto(
                    sock.as_raw_fd(),
                    back.as_ptr().cast(),
                    back.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(
                sent,
                back.len() as isize,
                "sendto: {}",
                std::io::Error::last_os_error()
            );
            let fd = tap.poll_fd().expect("tap fd");
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut frame = vec![0u8; 65562];
            loop {
                assert!(Instant::now() < deadline, "no frame from the tap");
                let mut pfd = [libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                }];
                // SAFETY: polling one valid pollfd.
                unsafe { libc::poll(pfd.as_mut_ptr(), 1, 200) };
                match tap.read_frame(&mut frame) {
                    Ok(n) if n >= VNET_HDR_LEN && frame[VNET_HDR_LEN..n] == back[..] => break,
                    Ok(_) => continue, // IPv6 neighbour discovery and the like
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => panic!("tap read: {e}"),
                }
            }
            assert_eq!(
                frame[..10],
                [0; 10][..],
                "a plain frame: no offload flags, no GSO"
            );
        })
    };
    let result = worker.join();
    drop(ns);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn a_multiqueue_tap_opens_a_queue_per_pair_that_can_be_detached() {
    if !usable() {
        eprintln!("skipped: needs root, iproute2 and /dev/net/tun");
        return;
    }
    let Some(ns) = Netns::create() else {
        eprintln!("skipped: cannot create a network namespace");
        return;
    };
    std::thread::spawn(move || {
        ns.enter().expect("setns");
        let mut taps = Tap::open_queues("zvmmq0", 2).expect("two queues");
        assert_eq!(taps.len(), 2);
        assert!(taps.iter().all(|t| t.name() == "zvmmq0"));
        assert!(
            Tap::open("zvmmq0").is_err(),
            "the tap is multiqueue: a single-queue open is refused"
        );
        taps[1].set_queue_enabled(false).expect("detach");
        assert!(
            taps[1].set_queue_enabled(false).is_err(),
            "already detached"
        );
        taps[1].set_queue_enabled(true).expect("attach again");
        let single = Tap::open_queues("zvmsq0", 1).expect("one queue");
        assert_eq!(single.len(), 1);
        drop(ns);
    })
    .join()
    .expect("namespace thread");
}
