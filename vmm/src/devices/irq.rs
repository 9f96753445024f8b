//! Interrupt lines from devices to the in-kernel irqchip.

use vmm_sys_util::eventfd::EventFd;

/// An edge-triggered line into KVM's IOAPIC/PIC: an eventfd registered as an irqfd,
/// so raising it is one write(2) and no ioctl.
pub struct IrqLine {
    pub gsi: u32,
    evt: EventFd,
}

impl IrqLine {
    pub fn new(gsi: u32) -> std::io::Result<Self> {
        Ok(IrqLine {
            gsi,
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(IrqLine {
            gsi: self.gsi,
            evt: self.evt.try_clone()?,
        })
    }

    pub fn raise(&self) -> std::io::Result<()> {
        self.evt.write(1)
    }
}

impl vm_superio::Trigger for IrqLine {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.raise()
    }
}
