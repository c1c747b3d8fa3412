//! Attaching devices: the legacy ones on their fixed ports and IRQs, and virtio-mmio
//! devices each in its own MMIO slot with the next free IRQ.

use super::{io_err, kvm_err, BuildError, MicrovmBuilder, VirtioSlot};
use crate::arch::acpi;
use crate::bus::BusRange;
use crate::devices::acpi_pm::AcpiPmDevice;
use crate::devices::boot_timer::BootTimerDevice;
use crate::devices::i8042::{I8042Device, KBD_IRQ};
use crate::devices::ioapic::bus::LevelLine;
use crate::devices::serial::{ConsoleSink, SerialDevice};
use crate::devices::virtio::block::Block;
use crate::devices::virtio::mmio::{MmioTransport, MMIO_SLOT_SIZE, QUEUE_NOTIFY_OFFSET};
use crate::devices::virtio::net::{parse_mac, tap::Tap, Net, NetError};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::VirtioDevice;
use crate::devices::EventFdTrigger;
use crate::layout;
use crate::metrics::DeviceMetrics;
use crate::resources::{DriveConfig, NetConfig, VsockConfig};
use kvm_ioctls::IoEventAddress;
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

impl MicrovmBuilder {
    /// COM1 on its ports and IRQ 4, writing to `sink`; `input` forwards stdin to it.
    pub fn attach_serial(
        &mut self,
        sink: ConsoleSink,
        timestamps: bool,
        input: bool,
    ) -> Result<(), BuildError> {
        let irq = EventFd::new(EFD_NONBLOCK).map_err(io_err("create the serial eventfd"))?;
        if self.opts.irqchip {
            self.vm
                .register_irqfd(&irq, layout::COM1_IRQ)
                .map_err(kvm_err("register the serial irqfd"))?;
        }
        let out = sink.into_writer(timestamps.then_some(self.opts.process_start));
        let serial = Arc::new(Mutex::new(SerialDevice::new(EventFdTrigger::new(irq), out)));
        self.pio.insert(
            BusRange::new(u64::from(layout::COM1_PORT), 8),
            serial.clone(),
        )?;
        self.serial = Some(serial);
        self.console_input = input;
        Ok(())
    }

    /// The i8042 controller and its keyboard on ports 0x60-0x64 and IRQ 1: a guest reboot
    /// through it ends the VM, and [`crate::vm::RunningVm::keyboard`] presses Ctrl-Alt-Del.
    pub fn attach_i8042(&mut self) -> Result<(), BuildError> {
        let evt = self
            .reset_evt
            .try_clone()
            .map_err(io_err("clone the reset eventfd"))?;
        let irq = EventFd::new(EFD_NONBLOCK).map_err(io_err("create the keyboard eventfd"))?;
        if self.opts.irqchip {
            self.vm
                .register_irqfd(&irq, KBD_IRQ)
                .map_err(kvm_err("register the keyboard irqfd"))?;
        }
        let dev = Arc::new(Mutex::new(I8042Device::new(evt, irq)));
        self.pio
            .insert(BusRange::new(u64::from(layout::I8042_PORT), 5), dev.clone())?;
        self.i8042 = Some(dev);
        Ok(())
    }

    /// The ACPI power-management registers (a guest power-off or ACPI reset ends the VM)
    /// and the power button's interrupt, as the ACPI tables describe them.
    pub fn attach_acpi_pm(&mut self) -> Result<(), BuildError> {
        let poweroff = self
            .poweroff_evt
            .try_clone()
            .map_err(io_err("clone the power-off eventfd"))?;
        let reset = self
            .reset_evt
            .try_clone()
            .map_err(io_err("clone the reset eventfd"))?;
        self.pio.insert(
            BusRange::new(u64::from(layout::ACPI_PM_PORT), acpi::pm::LEN),
            Arc::new(Mutex::new(AcpiPmDevice::new(poweroff, reset))),
        )?;
        if self.opts.irqchip {
            let button =
                EventFd::new(EFD_NONBLOCK).map_err(io_err("create the power button eventfd"))?;
            self.vm
                .register_irqfd(&button, layout::GED_IRQ)
                .map_err(kvm_err("register the power button irqfd"))?;
            self.power_button = Some(button);
        }
        Ok(())
    }

    /// The boot-timer device on its MMIO page.
    pub fn attach_boot_timer(&mut self) -> Result<(), BuildError> {
        let dev = BootTimerDevice::new(
            self.opts.process_start,
            self.build_start,
            self.boot_time.clone(),
        );
        self.mmio.insert(
            BusRange::new(layout::BOOT_TIMER_START, 0x1000),
            Arc::new(Mutex::new(dev)),
        )?;
        Ok(())
    }

    /// `device` on the next virtio-mmio page (4 KiB from [`layout::VIRTIO_MMIO_START`])
    /// with the next device IRQ: its queue eventfds become KVM ioeventfds on QueueNotify
    /// (the VMM loop polls them and the device's host fds), its interrupt an irqfd; the
    /// ACPI tables (and, unless told otherwise, the kernel command line's
    /// `virtio_mmio.device=4K@ADDR:IRQ`) describe it. Must come before
    /// [`Self::load_kernel`].
    pub fn attach_virtio_mmio(
        &mut self,
        device: Box<dyn VirtioDevice>,
    ) -> Result<VirtioSlot, BuildError> {
        let slot = self.next_virtio_slot();
        if slot.irq > layout::IRQ_MAX {
            return Err(BuildError::NoFreeIrq {
                first: layout::IRQ_DEVICE_BASE,
                last: layout::IRQ_MAX,
            });
        }
        let transport = MmioTransport::new(self.mem.clone(), device)?;
        let notify = IoEventAddress::Mmio(slot.addr + QUEUE_NOTIFY_OFFSET);
        for (index, evt) in transport.queue_evts().iter().enumerate() {
            self.vm
                .register_ioevent(evt, &notify, index as u32)
                .map_err(kvm_err("register a virtio queue ioeventfd"))?;
        }
        if self.opts.irqchip {
            self.vm
                .register_irqfd(transport.interrupt_evt(), slot.irq)
                .map_err(kvm_err("register a virtio irqfd"))?;
        }
        if let Some(ioapic) = &self.ioapic {
            // A guest that makes the pin level-triggered gets it raised again after its
            // EOI while InterruptStatus still has bits set.
            let interrupt = transport.interrupt();
            let raise = interrupt
                .eventfd()
                .try_clone()
                .map_err(io_err("clone a virtio irqfd"))?;
            let line = LevelLine::new(Box::new(move || interrupt.status() != 0), raise);
            ioapic
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .set_line(slot.irq, line);
        }
        let transport = Arc::new(Mutex::new(transport));
        self.mmio
            .insert(BusRange::new(slot.addr, MMIO_SLOT_SIZE), transport.clone())?;
        // The VMM loop polls the device's fds (see `TransportEvents`).
        self.virtio.push(transport);
        self.virtio_slots.push(slot);
        Ok(slot)
    }

    /// Where the next virtio-mmio device goes: the page and IRQ after the last one's.
    pub(super) fn next_virtio_slot(&self) -> VirtioSlot {
        let n = self.virtio_slots.len();
        VirtioSlot {
            addr: layout::VIRTIO_MMIO_START + n as u64 * MMIO_SLOT_SIZE,
            irq: layout::IRQ_DEVICE_BASE + n as u32,
        }
    }

    /// A virtio-blk device for `drive`. Drives appear in the guest as `/dev/vda`,
    /// `/dev/vdb`, ... in attach order; a root device adds `root=/dev/vdX ro|rw`.
    pub fn attach_drive(&mut self, drive: &DriveConfig) -> Result<VirtioSlot, BuildError> {
        let mut block = Block::open(&drive.path_on_host, drive.is_read_only, &drive.drive_id)?
            .with_engine(drive.io_engine, self.seccomp)?;
        if let Some(limit) = &drive.rate_limiter {
            block = block.with_rate_limiter(limit)?;
        }
        tracing::debug!(
            "drive {}: {} sectors, read_only={}, I/O on {}",
            drive.drive_id,
            block.capacity(),
            drive.is_read_only,
            block.engine_name()
        );
        self.metrics
            .register(&drive.drive_id, DeviceMetrics::Block(block.metrics()));
        let slot = self.attach_virtio_mmio(Box::new(block))?;
        if drive.is_root_device {
            let letter = char::from(b'a' + (self.block_count % 26) as u8);
            let mode = if drive.is_read_only { "ro" } else { "rw" };
            self.device_args
                .push(format!("root=/dev/vd{letter} {mode}"));
        }
        self.block_count += 1;
        Ok(slot)
    }

    /// A virtio-net device on the host tap `net.host_dev_name` (opened, or created when
    /// it does not exist and zvm may create it; a created tap lasts as long as zvm), with
    /// one tap queue per queue pair.
    pub fn attach_net(&mut self, net: &NetConfig) -> Result<VirtioSlot, BuildError> {
        let err = |source: NetError| BuildError::Net {
            id: net.iface_id.clone(),
            source,
        };
        let mac = net
            .guest_mac
            .as_deref()
            .map(parse_mac)
            .transpose()
            .map_err(err)?;
        let taps = Tap::open_queues(&net.host_dev_name, usize::from(net.queue_pairs))
            .map_err(|e| err(e.into()))?;
        tracing::debug!(
            "network interface {}: tap {}, {} queue pair(s)",
            net.iface_id,
            taps.first().map_or("", Tap::name),
            taps.len()
        );
        let backends = taps
            .into_iter()
            .map(|tap| Box::new(tap) as Box<dyn crate::devices::virtio::net::NetBackend>)
            .collect();
        let device = Net::with_pairs(
            &net.iface_id,
            backends,
            mac,
            net.rx_rate_limiter.as_ref(),
            net.tx_rate_limiter.as_ref(),
        )
        .map_err(err)?;
        self.metrics
            .register(&net.iface_id, DeviceMetrics::Net(device.metrics()));
        self.attach_virtio_mmio(Box::new(device))
    }

    /// A virtio-rng device.
    pub fn attach_entropy(&mut self) -> Result<VirtioSlot, BuildError> {
        let rng = Rng::new();
        self.metrics
            .register("rng", DeviceMetrics::Rng(rng.metrics()));
        self.attach_virtio_mmio(Box::new(rng))
    }

    /// A virtio-vsock device for `vsock`: listens on its `uds_path` (replacing a stale
    /// socket there); the VMM loop polls its host sockets.
    pub fn attach_vsock(&mut self, vsock: &VsockConfig) -> Result<VirtioSlot, BuildError> {
        let device = Vsock::new(u64::from(vsock.guest_cid), &vsock.uds_path)?;
        self.metrics
            .register("vsock", DeviceMetrics::Vsock(device.metrics()));
        self.attach_virtio_mmio(Box::new(device))
    }
}
