//! Transmit tests over a datagram socket standing in for the tap: a chain of several
//! buffers leaves with one `writev`, whole, and bad chains send nothing.

use super::tap::Tap;
use super::tests::{frame, rig_with, MockBackend};
use super::*;
use crate::devices::virtio::test_utils::*;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use vm_memory::{Bytes, GuestAddress};

/// A device whose tap is one end of a datagram socket pair; the other end is returned.
fn socket_rig(mem: &GuestMemoryMmap) -> (super::tests::Rig<'_>, UnixDatagram) {
    let (ours, theirs) = UnixDatagram::pair().expect("socketpair");
    ours.set_nonblocking(true).expect("non-blocking");
    theirs.set_nonblocking(true).expect("non-blocking");
    let tap = Tap::from_file(File::from(OwnedFd::from(ours)), "test0");
    let r = rig_with(mem, Box::new(tap), 0, None, None, MockBackend::default());
    (r, theirs)
}

#[test]
fn a_chain_of_several_buffers_leaves_as_one_frame() {
    let mem = memory();
    let (mut r, peer) = socket_rig(&mem);
    let f = frame(3000, 1);
    // Header, then the frame in three pieces in different pages.
    let pieces = [(0usize, 12usize), (12, 1000), (1012, 1), (1013, 1987)];
    let descs: Vec<_> = pieces
        .iter()
        .enumerate()
        .map(|(i, &(at, len))| {
            let addr = DATA + 0x2000 * i as u64 + 7;
            mem.write_slice(&f[at..at + len], GuestAddress(addr))
                .expect("piece");
            let last = i + 1 == pieces.len();
            let flags = if last { 0 } else { F_NEXT };
            linked(addr, len as u32, flags, i as u16 + 1)
        })
        .collect();
    r.txq.add_desc_chains(&descs, 0).expect("chain");
    r.net.process_queue(TX_QUEUE);
    let mut got = vec![0u8; 8192];
    let n = peer.recv(&mut got).expect("one datagram");
    assert_eq!(&got[..n], &f[..], "the frame, whole and in order");
    assert!(peer.recv(&mut got).is_err(), "and only it");
    assert_eq!(used_entry(&mem, &r.txq, 0), (0, 0));
    assert_eq!(r.net.metrics().tx_bytes.get(), 3000);
}

#[test]
fn bad_tx_chains_send_nothing() {
    let mem = memory();
    let (mut r, peer) = socket_rig(&mem);
    r.txq
        .add_desc_chains(
            &[
                linked(DATA, 12, F_NEXT, 1),
                linked(MEM_SIZE - 16, 64, 0, 0), // runs past the end of guest memory
                linked(DATA, 12, F_NEXT | F_WRITE, 3), // device-writable
                linked(DATA, 60, 0, 0),
                linked(u64::MAX - 8, 64, 0, 0), // address wraps
            ],
            0,
        )
        .expect("chains");
    r.net.process_queue(TX_QUEUE);
    let mut buf = [0u8; 128];
    assert!(peer.recv(&mut buf).is_err(), "nothing was sent");
    assert_eq!(used_idx(&mem, &r.txq), 3);
    assert_eq!(r.net.metrics().dropped.get(), 3);
}

#[test]
fn frame_buffers_refuse_too_many_pieces_and_ranges_outside_memory() {
    let mem = memory();
    let mut bufs = iov::FrameBufs::new();
    for i in 0..iov::MAX_IOVECS as u64 {
        bufs.push_guest(&mem, GuestAddress(DATA + 2 * i), 1)
            .expect("piece");
    }
    assert!(matches!(
        bufs.push_guest(&mem, GuestAddress(DATA), 1),
        Err(NetError::TooManyPieces)
    ));
    assert_eq!(bufs.len(), iov::MAX_IOVECS, "nothing added by a refusal");
    let mut other = iov::FrameBufs::new();
    assert!(matches!(
        other.push_guest(&mem, GuestAddress(MEM_SIZE - 1), 2),
        Err(NetError::Memory(_))
    ));
    assert!(other.is_empty());
}
