//! Counters that devices and vCPUs keep while a VM runs, and reports of them for a
//! metrics writer.
//!
//! A [`Counter`] is a shared atomic that only goes up. Like Firecracker's
//! `SharedIncMetric`, it also remembers how much of it was already reported, so that a
//! writer can emit the increase since its previous line ([`Counter::take_delta`]) while
//! the device keeps counting without locks. Each device owns an `Arc` of its counter
//! group ([`BlockMetrics`], [`NetMetrics`], ...); the builder registers the groups in the
//! VM's [`VmMetrics`], which the embedder reports from.

use crate::devices::boot_timer::{BootTime, BootTimeRecord};
use crate::kvm_stats::KvmStats;
use serde_json::{Map, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A counter shared between the thread that counts and the thread that reports.
#[derive(Debug, Default)]
pub struct Counter {
    count: AtomicU64,
    reported: AtomicU64,
}

impl Counter {
    /// A counter at zero.
    pub const fn new() -> Self {
        Counter {
            count: AtomicU64::new(0),
            reported: AtomicU64::new(0),
        }
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.count.fetch_add(n, Ordering::Relaxed);
    }

    /// The total so far.
    pub fn get(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The increase since the previous call (the total on the first call); marks it
    /// reported.
    pub fn take_delta(&self) -> u64 {
        let now = self.count.load(Ordering::Relaxed);
        let before = self.reported.swap(now, Ordering::Relaxed);
        now.saturating_sub(before)
    }
}

/// Defines a group of counters with a report of their deltas and of their totals.
macro_rules! counter_group {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: Counter,)*
        }

        impl $name {
            /// The increase of each counter since the previous report, by name.
            pub fn report(&self) -> Map<String, Value> {
                let mut map = Map::new();
                $(map.insert(stringify!($field).to_string(), Value::from(self.$field.take_delta()));)*
                map
            }

            /// The total of each counter, by name.
            pub fn totals(&self) -> Map<String, Value> {
                let mut map = Map::new();
                $(map.insert(stringify!($field).to_string(), Value::from(self.$field.get()));)*
                map
            }
        }
    };
}

counter_group! {
    /// VM exits of all vCPUs, by kind.
    VcpuMetrics {
        /// Port reads (IN).
        exit_io_in,
        /// Port writes (OUT).
        exit_io_out,
        /// MMIO reads.
        exit_mmio_read,
        /// MMIO writes.
        exit_mmio_write,
        /// HLT reaching userspace (only without an in-kernel irqchip).
        exit_hlt,
        /// KVM_RUN interrupted by a signal (kicks for pause and stop).
        exit_intr,
        /// System events: power off, reset, crash.
        exit_system_event,
        /// Triple faults, internal errors, failed entries, unknown exits.
        failures,
    }
}

counter_group! {
    /// One virtio-blk device.
    BlockMetrics {
        /// Bytes read from the disk into the guest.
        read_bytes,
        /// Bytes written from the guest to the disk.
        write_bytes,
        /// Read requests served.
        read_count,
        /// Write requests served.
        write_count,
        /// Flush requests served.
        flush_count,
        /// Requests that failed (bad request, I/O error, write to a read-only disk).
        failures,
        /// Times the rate limiter held requests back.
        rate_limiter_throttled,
    }
}

counter_group! {
    /// One virtio-net device.
    NetMetrics {
        /// Bytes delivered to the guest (vnet headers included).
        rx_bytes,
        /// Frames delivered to the guest.
        rx_packets,
        /// Bytes the guest sent (vnet headers included).
        tx_bytes,
        /// Frames the guest sent.
        tx_packets,
        /// Frames lost on the way in (bad RX chain) or out (bad TX chain, tap write failed).
        dropped,
        /// Times the RX rate limiter held frames back.
        rx_rate_limiter_throttled,
        /// Times the TX rate limiter held frames back.
        tx_rate_limiter_throttled,
    }
}

counter_group! {
    /// The virtio-vsock device.
    VsockMetrics {
        /// Packets delivered to the guest.
        rx_packets,
        /// Payload bytes delivered to the guest.
        rx_bytes,
        /// Packets the guest sent.
        tx_packets,
        /// Payload bytes the guest sent.
        tx_bytes,
        /// Connections established (either side connecting).
        conns_added,
        /// Connection resets, either way.
        conns_reset,
    }
}

counter_group! {
    /// The virtio-rng device.
    RngMetrics {
        /// Requests served.
        requests,
        /// Random bytes delivered.
        bytes,
    }
}

/// The counters of one device, by kind.
#[derive(Debug, Clone)]
pub enum DeviceMetrics {
    /// A virtio-blk device.
    Block(Arc<BlockMetrics>),
    /// A virtio-net device.
    Net(Arc<NetMetrics>),
    /// A virtio-vsock device.
    Vsock(Arc<VsockMetrics>),
    /// A virtio-rng device.
    Rng(Arc<RngMetrics>),
}

impl DeviceMetrics {
    fn kind(&self) -> &'static str {
        match self {
            DeviceMetrics::Block(_) => "block",
            DeviceMetrics::Net(_) => "net",
            DeviceMetrics::Vsock(_) => "vsock",
            DeviceMetrics::Rng(_) => "entropy",
        }
    }

    fn report(&self) -> Map<String, Value> {
        match self {
            DeviceMetrics::Block(m) => m.report(),
            DeviceMetrics::Net(m) => m.report(),
            DeviceMetrics::Vsock(m) => m.report(),
            DeviceMetrics::Rng(m) => m.report(),
        }
    }
}

/// Every counter of one VM: its vCPUs' exits, its devices, and the guest's boot time.
#[derive(Debug, Default)]
pub struct VmMetrics {
    vcpu: Arc<VcpuMetrics>,
    kvm: KvmStats,
    devices: Mutex<Vec<(String, DeviceMetrics)>>,
    boot_time: Mutex<Option<BootTimeRecord>>,
}

impl VmMetrics {
    /// The exit counters all vCPUs share.
    pub fn vcpu(&self) -> Arc<VcpuMetrics> {
        self.vcpu.clone()
    }

    /// KVM's own counters of the vCPUs.
    pub fn kvm(&self) -> &KvmStats {
        &self.kvm
    }

    /// Adds a device's counters under `id` (the drive or interface id).
    pub fn register(&self, id: &str, metrics: DeviceMetrics) {
        self.devices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id.to_string(), metrics));
    }

    /// Where the guest's boot-timer report lands.
    pub fn set_boot_time_record(&self, record: BootTimeRecord) {
        *self.boot_time.lock().unwrap_or_else(|p| p.into_inner()) = Some(record);
    }

    /// The boot time the guest reported, once it did.
    pub fn boot_time(&self) -> Option<BootTime> {
        let record = self
            .boot_time
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        let time = *record.lock().unwrap_or_else(|p| p.into_inner());
        time
    }

    /// The increases since the previous report, in Firecracker's layout: `vcpu`, one
    /// aggregate per device kind (`block`, `net`, `vsock`, `entropy`, sums over the
    /// devices of that kind) and one entry per device (`block_<id>`, `net_<id>`); and
    /// `kvm`, KVM's own cumulative counters summed over the vCPUs under the kernel's
    /// names (`exits`, `io_exits`, `mmio_exits`, `irq_injections`, ...; totals, not
    /// increases, as QEMU's `query-stats` gives them).
    pub fn report(&self) -> Map<String, Value> {
        let mut out = Map::new();
        out.insert("vcpu".into(), Value::Object(self.vcpu.report()));
        out.insert("kvm".into(), Value::Object(self.kvm.totals()));
        let devices = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        for (id, metrics) in devices.iter() {
            let kind = metrics.kind();
            let report = metrics.report();
            let aggregate = out
                .entry(kind.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(sums) = aggregate {
                for (name, value) in &report {
                    let add = value.as_u64().unwrap_or(0);
                    let sum = sums
                        .get(name)
                        .and_then(Value::as_u64)
                        .unwrap_or(0)
                        .saturating_add(add);
                    sums.insert(name.clone(), Value::from(sum));
                }
            }
            if matches!(metrics, DeviceMetrics::Block(_) | DeviceMetrics::Net(_)) {
                out.insert(format!("{kind}_{id}"), Value::Object(report));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_report_increases_since_the_last_report() {
        let c = Counter::new();
        c.inc();
        c.add(41);
        assert_eq!(c.get(), 42);
        assert_eq!(c.take_delta(), 42);
        assert_eq!(c.take_delta(), 0);
        c.add(8);
        assert_eq!(c.take_delta(), 8);
        assert_eq!(c.get(), 50, "the total keeps counting");
    }

    #[test]
    fn counters_are_shared_between_threads() {
        let m = Arc::new(BlockMetrics::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        m.read_count.inc();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("join");
        }
        assert_eq!(m.totals()["read_count"], 4000);
    }

    #[test]
    fn vm_report_has_aggregates_and_per_device_entries() {
        let vm = VmMetrics::default();
        let (a, b) = (
            Arc::new(BlockMetrics::default()),
            Arc::new(BlockMetrics::default()),
        );
        let rng = Arc::new(RngMetrics::default());
        vm.register("root", DeviceMetrics::Block(a.clone()));
        vm.register("data", DeviceMetrics::Block(b.clone()));
        vm.register("rng", DeviceMetrics::Rng(rng.clone()));
        a.read_bytes.add(512);
        b.read_bytes.add(1024);
        b.flush_count.inc();
        rng.bytes.add(64);
        vm.vcpu().exit_io_out.add(3);
        let r = vm.report();
        assert_eq!(r["block"]["read_bytes"], 1536);
        assert_eq!(r["block"]["flush_count"], 1);
        assert_eq!(r["block_root"]["read_bytes"], 512);
        assert_eq!(r["block_data"]["read_bytes"], 1024);
        assert_eq!(r["entropy"]["bytes"], 64);
        assert_eq!(r["vcpu"]["exit_io_out"], 3);
        assert!(
            r.get("entropy_rng").is_none(),
            "one entropy device: only the aggregate"
        );
        let again = vm.report();
        assert_eq!(
            again["block"]["read_bytes"], 0,
            "deltas: nothing new since the last report"
        );
        assert_eq!(again["vcpu"]["exit_io_out"], 0);
        assert_eq!(vm.boot_time(), None);
    }
}
