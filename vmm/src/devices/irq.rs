//! Interrupt lines from devices to the in-kernel irqchip.

use std::sync::Arc;

use kvm_ioctls::VmFd;
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

/// A level-triggered line: the device holds it high while it has something
/// for the guest. Nothing raised before the guest listens is lost: an edge
/// into an IOAPIC pin the guest has not unmasked yet is dropped, a level
/// is delivered when the pin is unmasked.
pub trait LevelLine: Send {
    fn set(&self, high: bool) -> std::io::Result<()>;
}

/// A [`LevelLine`] into KVM's IOAPIC, driven by KVM_IRQ_LINE (an ioctl per
/// change; for lines that change rarely).
pub struct KvmLevelLine {
    vm: Arc<VmFd>,
    gsi: u32,
}

impl KvmLevelLine {
    pub fn new(vm: Arc<VmFd>, gsi: u32) -> Self {
        KvmLevelLine { vm, gsi }
    }
}

impl LevelLine for KvmLevelLine {
    fn set(&self, high: bool) -> std::io::Result<()> {
        self.vm
            .set_irq_line(self.gsi, high)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}
