//! Devices that live on zvm's buses.

pub mod boot_timer;
pub mod i8042;
pub mod serial;
pub mod virtio;

use std::io;
use vmm_sys_util::eventfd::EventFd;

/// An interrupt line backed by an eventfd registered with KVM as an irqfd.
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wraps `evt`.
    pub fn new(evt: EventFd) -> Self {
        EventFdTrigger(evt)
    }

    /// The eventfd, for registering with KVM.
    pub fn eventfd(&self) -> &EventFd {
        &self.0
    }
}

impl vm_superio::Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}
