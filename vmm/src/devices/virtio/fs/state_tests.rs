//! Snapshots of virtio-fs devices: allowed while the guest never used the share, the
//! saved state replayed on a new backend, hostile states refused.

use super::*;
use crate::devices::virtio::mmio::VirtioDeviceState;
use vm_memory::Bytes;

/// Where `driver_queues` puts queue `index`'s available and used rings.
fn avail_ring(index: u64) -> u64 {
    0x10_0000 + index * 0x1_0000 + 0x1000
}
fn used_ring(index: u64) -> u64 {
    avail_ring(index) + 0x1000
}

fn saved(fs: &Fs) -> FsState {
    match fs.save_device_state() {
        Some(VirtioDeviceState::Fs(state)) => state,
        other => panic!("a virtio-fs device saves its state, not {other:?}"),
    }
}

#[test]
fn an_unused_share_is_saved_and_replayed_on_a_new_backend() {
    let (mut fs, _log, mem, _irq) = running_device(GOOD);
    fs.quiesce().expect("the guest never sent a request");
    let state = saved(&fs);
    assert_eq!(state.version, FS_STATE_VERSION);
    assert_eq!((state.tag.as_str(), state.request_queues), ("hostshare", 1));
    assert_eq!(state.driver_features, VIRTIO_F_VERSION_1);
    assert_eq!(state.queues.len(), 2, "hiprio + one request queue");
    assert_eq!(
        state.queues[1],
        FsQueueState {
            ready: true,
            size: 16,
            desc_table: 0x11_0000,
            avail_ring: avail_ring(1),
            used_ring: used_ring(1),
            next_avail: 0,
            next_used: 0,
        }
    );
    // Through the state file's encoding and back.
    let bytes = bincode::serialize(&VirtioDeviceState::Fs(state.clone())).expect("encode");
    let back: VirtioDeviceState = bincode::deserialize(&bytes).expect("decode");
    assert_eq!(back, VirtioDeviceState::Fs(state.clone()));

    // A new device on a new backend takes the state, then the transport re-activates it:
    // the set-up is replayed on the VMM loop, from the saved vring bases.
    let mut replayed = state.clone();
    replayed.queues[1].next_avail = 5;
    let (sock, log) = fake_backend(GOOD);
    let mut restored = Fs::from_stream("shared", "hostshare", 1, sock).expect("connect");
    restored
        .restore_device_state(&VirtioDeviceState::Fs(replayed), &mem)
        .expect("fits");
    let before = requests(&log).len();
    restored.ack_features(VIRTIO_F_VERSION_1);
    restored
        .activate(
            mem.clone(),
            driver_queues(&mem),
            Interrupt::new().expect("irq"),
        )
        .expect("re-activate");
    restored.process_host_event();
    assert!(restored.is_running(), "{:?}", restored.broken());
    let log = log.lock().expect("log");
    let sent: Vec<u32> = log[before..].iter().map(|m| m.request).collect();
    assert_eq!(&sent[..2], [SET_FEATURES, SET_MEM_TABLE]);
    let bases: Vec<(u32, u32)> = log[before..]
        .iter()
        .filter(|m| m.request == SET_VRING_BASE)
        .map(|m| (m.u32_at(0), m.u32_at(4)))
        .collect();
    assert_eq!(bases, [(0, 0), (1, 5)], "the saved vring bases");
    assert_eq!(saved(&restored).queues[1].next_avail, 5);
}

#[test]
fn a_share_the_guest_used_is_refused_with_the_reason() {
    // A request made available on the request queue (the guest mounted the share).
    let (mut fs, _log, mem, _irq) = running_device(GOOD);
    mem.write_obj(1u16, GuestAddress(avail_ring(1) + 2))
        .expect("avail idx");
    let err = fs.quiesce().expect_err("used");
    assert!(
        err.contains("'shared'")
            && err.contains("tag 'hostshare'")
            && err.contains("request queue 0")
            && err.contains("device-state transfer"),
        "{err}"
    );
    assert!(fs.is_running(), "the device goes on");

    // One on the hiprio queue (a FORGET), already used.
    let (mut fs, _log, mem, _irq) = running_device(GOOD);
    mem.write_obj(3u16, GuestAddress(used_ring(0) + 2))
        .expect("used idx");
    let err = fs.quiesce().expect_err("used");
    assert!(err.contains("hiprio"), "{err}");

    // The backend notified the guest (the ring indexes may have wrapped back to 0).
    let (mut fs, log, _mem, _irq) = running_device(GOOD);
    let call = log.lock().expect("log")[10].fds.remove(0);
    (&call).write_all(&1u64.to_le_bytes()).expect("call");
    fs.process_host_event();
    let err = fs.quiesce().expect_err("used");
    assert!(err.contains("notified"), "{err}");

    // A reset that found the backend's ring past 0 (the fake backend answers 7).
    let (mut fs, _log, _mem, _irq) = running_device(GOOD);
    fs.reset();
    fs.process_host_event();
    let err = fs.quiesce().expect_err("used before the reset");
    assert!(err.contains("taken 7 requests"), "{err}");
}

#[test]
fn a_device_the_driver_never_started_saves_no_queues() {
    let (sock, _log) = fake_backend(GOOD);
    let mut fs = Fs::from_stream("shared", "hostshare", 1, sock).expect("connect");
    fs.quiesce().expect("nothing to have used");
    let state = saved(&fs);
    assert!(state.queues.is_empty());
    let (sock, _log) = fake_backend(GOOD);
    let mut other = Fs::from_stream("shared", "hostshare", 1, sock).expect("connect");
    let mem = create_shared_guest_memory(4 << 20).expect("memory");
    other
        .restore_device_state(&VirtioDeviceState::Fs(state), &mem)
        .expect("fits");
    other
        .activate(
            mem.clone(),
            driver_queues(&mem),
            Interrupt::new().expect("irq"),
        )
        .expect("a driver starting it later is a boot's activation");
}

#[test]
fn hostile_states_are_refused_with_a_clear_error() {
    let (fs, _log, mem, _irq) = running_device(GOOD);
    let good = saved(&fs);
    let (sock, _log) = fake_backend(GOOD);
    let mut fresh = Fs::from_stream("shared", "hostshare", 1, sock).expect("connect");
    let with_queue = |f: fn(&mut FsQueueState)| {
        let mut s = good.clone();
        f(&mut s.queues[1]);
        s
    };
    let cases = [
        (
            FsState {
                version: 9,
                ..good.clone()
            },
            "version 9",
        ),
        (
            FsState {
                tag: "other".into(),
                ..good.clone()
            },
            "tag 'other'",
        ),
        (
            FsState {
                request_queues: 4,
                ..good.clone()
            },
            "4 request queues",
        ),
        (
            FsState {
                queues: vec![good.queues[0]; 3],
                ..good.clone()
            },
            "3 queues",
        ),
        (with_queue(|q| q.size = 3), "size 3"),
        (with_queue(|q| q.size = 2048), "size 2048"),
        (with_queue(|q| q.size = 0), "size 0"),
        (
            with_queue(|q| q.desc_table = 64 << 20),
            "not in guest memory",
        ),
        (
            with_queue(|q| q.used_ring = (4 << 20) - 8),
            "not in guest memory",
        ),
        (
            with_queue(|q| q.avail_ring = u64::MAX - 1),
            "not in guest memory",
        ),
    ];
    for (state, expected) in cases {
        let err = fresh
            .restore_device_state(&VirtioDeviceState::Fs(state), &mem)
            .expect_err(expected);
        assert!(err.contains(expected), "{expected}: {err}");
    }

    // A state whose queues disagree with the transport's is refused at re-activation.
    fresh
        .restore_device_state(&VirtioDeviceState::Fs(with_queue(|q| q.size = 32)), &mem)
        .expect("fits on its own");
    let err = fresh
        .activate(
            mem.clone(),
            driver_queues(&mem),
            Interrupt::new().expect("irq"),
        )
        .expect_err("disagrees with the transport");
    assert!(err.to_string().contains("queue 1"), "{err}");
}
