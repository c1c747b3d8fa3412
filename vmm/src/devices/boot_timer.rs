//! The boot-timer device: the guest writes a magic byte when it reaches userspace and
//! zvm logs how long that took from process start and from the start of the VM build.

use crate::bus::BusDevice;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The byte a guest writes to offset 0 to say "userspace reached" (Firecracker's value).
pub const BOOT_TIMER_MAGIC: u8 = 123;

/// When the guest reported reaching userspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootTime {
    /// Since the zvm process started (as given by the caller).
    pub since_process_start: Duration,
    /// Since `build_microvm` started.
    pub since_build_start: Duration,
}

/// Shared record of the boot time, readable after the VM ends.
pub type BootTimeRecord = Arc<Mutex<Option<BootTime>>>;

/// The device. Only the first report counts.
#[derive(Debug)]
pub struct BootTimerDevice {
    process_start: Instant,
    build_start: Instant,
    record: BootTimeRecord,
}

impl BootTimerDevice {
    /// A timer measuring from `process_start` and `build_start`, reporting into `record`.
    pub fn new(process_start: Instant, build_start: Instant, record: BootTimeRecord) -> Self {
        BootTimerDevice {
            process_start,
            build_start,
            record,
        }
    }
}

impl BusDevice for BootTimerDevice {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || data.first() != Some(&BOOT_TIMER_MAGIC) {
            return;
        }
        let mut record = self.record.lock().unwrap_or_else(|p| p.into_inner());
        if record.is_some() {
            return;
        }
        let now = Instant::now();
        let time = BootTime {
            since_process_start: now.duration_since(self.process_start),
            since_build_start: now.duration_since(self.build_start),
        };
        tracing::info!(
            "guest boot time: {:.1} ms since process start, {:.1} ms since VM build start",
            time.since_process_start.as_secs_f64() * 1e3,
            time.since_build_start.as_secs_f64() * 1e3
        );
        *record = Some(time);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_magic_write_at_offset_zero_records_once() {
        let record = BootTimeRecord::default();
        let start = Instant::now();
        let mut dev = BootTimerDevice::new(start, start, record.clone());
        dev.write(1, &[BOOT_TIMER_MAGIC]);
        dev.write(0, &[7]);
        assert!(record.lock().expect("lock").is_none());
        dev.write(0, &[BOOT_TIMER_MAGIC, 0, 0, 0]);
        let first = record.lock().expect("lock").expect("recorded");
        std::thread::sleep(Duration::from_millis(2));
        dev.write(0, &[BOOT_TIMER_MAGIC]);
        assert_eq!(record.lock().expect("lock").expect("kept"), first);
        assert!(first.since_process_start >= first.since_build_start);
    }
}
