//! The vhost-user messages that start and stop the backend's rings, on the VMM thread.

use super::FsError;
use crate::memory::GuestMemoryMmap;
use std::os::fd::AsRawFd;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

fn proto(what: &'static str) -> impl Fn(vhost::Error) -> FsError {
    move |source| FsError::Protocol { what, source }
}

/// Guest memory as the backend maps it: each region's memfd, offset and our address.
pub(super) fn memory_table(
    mem: &GuestMemoryMmap,
) -> Result<Vec<VhostUserMemoryRegionInfo>, FsError> {
    mem.iter()
        .map(|region| {
            let fo = region.file_offset().ok_or_else(|| {
                FsError::Memory(format!(
                    "the region at {:#x} is anonymous memory",
                    region.start_addr().0
                ))
            })?;
            Ok(VhostUserMemoryRegionInfo {
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
                mmap_offset: fo.start(),
                mmap_handle: fo.file().as_raw_fd(),
            })
        })
        .collect()
}

/// Our address of the guest range `addr..addr + len` (the backend translates it back
/// through the memory table).
pub(super) fn host_address(
    mem: &GuestMemoryMmap,
    addr: u64,
    len: u64,
    index: usize,
) -> Result<u64, FsError> {
    let end = addr
        .checked_add(len.saturating_sub(1))
        .ok_or(FsError::BadRing(index))?;
    // Both ends must be in one region: the backend maps regions, not the whole space.
    let start_host = mem
        .get_host_address(GuestAddress(addr))
        .map_err(|_| FsError::BadRing(index))?;
    let end_host = mem
        .get_host_address(GuestAddress(end))
        .map_err(|_| FsError::BadRing(index))?;
    if end_host as u64 - start_host as u64 != end - addr {
        return Err(FsError::BadRing(index));
    }
    Ok(start_host as u64)
}

/// Negotiates `features`, sends the memory table and starts every ready queue with the
/// driver's addresses, the queue's next available index, and the device's eventfds.
pub(super) fn start_rings(
    frontend: &Frontend,
    features: u64,
    mem: &GuestMemoryMmap,
    queues: &[Queue],
    kicks: &[vmm_sys_util::eventfd::EventFd],
    call: &vmm_sys_util::eventfd::EventFd,
) -> Result<(), FsError> {
    let frontend = frontend.clone();
    frontend
        .set_features(features)
        .map_err(proto("SET_FEATURES"))?;
    let table = memory_table(mem)?;
    frontend
        .set_mem_table(&table)
        .map_err(proto("SET_MEM_TABLE"))?;
    start_queues(&frontend, mem, queues, kicks, call)
}

/// Starts every ready queue (the features and memory table already sent): the driver's
/// addresses, the queue's next available index, and the device's eventfds. Also what
/// starts rings again after a snapshot stopped them.
pub(super) fn start_queues(
    frontend: &Frontend,
    mem: &GuestMemoryMmap,
    queues: &[Queue],
    kicks: &[vmm_sys_util::eventfd::EventFd],
    call: &vmm_sys_util::eventfd::EventFd,
) -> Result<(), FsError> {
    let mut frontend = frontend.clone();
    for (index, (queue, kick)) in queues.iter().zip(kicks).enumerate() {
        if !queue.ready() {
            continue;
        }
        let size = queue.size();
        let n = u64::from(size);
        let config = VringConfigData {
            queue_max_size: queue.max_size(),
            queue_size: size,
            flags: 0,
            desc_table_addr: host_address(mem, queue.desc_table(), 16 * n, index)?,
            used_ring_addr: host_address(mem, queue.used_ring(), 6 + 8 * n, index)?,
            avail_ring_addr: host_address(mem, queue.avail_ring(), 6 + 2 * n, index)?,
            log_addr: None,
        };
        frontend
            .set_vring_num(index, size)
            .map_err(proto("SET_VRING_NUM"))?;
        frontend
            .set_vring_addr(index, &config)
            .map_err(proto("SET_VRING_ADDR"))?;
        frontend
            .set_vring_base(index, queue.next_avail())
            .map_err(proto("SET_VRING_BASE"))?;
        frontend
            .set_vring_call(index, call)
            .map_err(proto("SET_VRING_CALL"))?;
        frontend
            .set_vring_kick(index, kick)
            .map_err(proto("SET_VRING_KICK"))?;
        frontend
            .set_vring_enable(index, true)
            .map_err(proto("SET_VRING_ENABLE"))?;
    }
    Ok(())
}

/// Stops every ring (GET_VRING_BASE), as a device reset must; returns where each ring
/// stopped (the next available entry the backend would have taken).
pub(super) fn stop_rings(frontend: &Frontend, queues: usize) -> Result<Vec<u32>, FsError> {
    let mut frontend = frontend.clone();
    let mut bases = Vec::with_capacity(queues);
    for index in 0..queues {
        frontend
            .set_vring_enable(index, false)
            .map_err(proto("SET_VRING_ENABLE"))?;
        bases.push(
            frontend
                .get_vring_base(index)
                .map_err(proto("GET_VRING_BASE"))?,
        );
    }
    Ok(bases)
}
