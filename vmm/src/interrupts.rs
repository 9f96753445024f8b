//! KVM's GSI routing table: the in-kernel irqchip's fixed routes plus one MSI route
//! per device vector. KVM replaces the whole table on every update, so this type
//! owns all of it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;

use crate::devices::lock;

/// IOAPIC pins; MSI routes take the GSIs after them.
pub const IOAPIC_PINS: u32 = 24;
/// KVM's routing table limit (KVM_MAX_IRQ_ROUTES is 4096; leave the irqchip room).
const MAX_MSI_ROUTES: usize = 4000;

#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    #[error("no GSI left for another MSI vector")]
    Exhausted,
    #[error("updating KVM's GSI routing: {0}")]
    Routing(kvm_ioctls::Error),
    #[error("building the routing table")]
    Table,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

struct Routes {
    next_gsi: u32,
    /// GSIs given back by unplugged devices, taken before new ones.
    free: Vec<u32>,
    msi: BTreeMap<u32, MsiMessage>,
    /// Legacy GSIs routed to the IOAPIC alone (see [`GsiRouter::ioapic_only`]).
    ioapic_only: Vec<u32>,
}

pub struct GsiRouter {
    vm: Arc<VmFd>,
    routes: Mutex<Routes>,
}

impl GsiRouter {
    pub fn new(vm: Arc<VmFd>) -> Self {
        GsiRouter {
            vm,
            routes: Mutex::new(Routes {
                next_gsi: IOAPIC_PINS,
                free: Vec::new(),
                msi: BTreeMap::new(),
                ioapic_only: Vec::new(),
            }),
        }
    }

    pub fn vm(&self) -> &VmFd {
        &self.vm
    }

    /// Takes `gsi` off the 8259 PIC, leaving it to the IOAPIC. A guest on
    /// our hardware-reduced ACPI platform never programs the PIC, so the
    /// PIC keeps its reset vector base of 0 and the boot
    /// vCPU's LINT0 takes its output until the guest sets up its local
    /// APIC: a line raised that early arrives as exception `gsi` (5: #BR,
    /// and the kernel panics). On the IOAPIC it waits, masked, until the
    /// guest's driver unmasks it. For the lines of ACPI-only devices, which
    /// no guest without an IOAPIC uses.
    pub fn ioapic_only(&self, gsi: u32) -> Result<(), InterruptError> {
        let mut r = lock(&self.routes);
        if !r.ioapic_only.contains(&gsi) {
            r.ioapic_only.push(gsi);
        }
        let table = routing_table(&r.msi, &r.ioapic_only).ok_or(InterruptError::Table)?;
        self.vm
            .set_gsi_routing(&table)
            .map_err(InterruptError::Routing)
    }

    pub fn allocate(&self) -> Result<u32, InterruptError> {
        let mut r = lock(&self.routes);
        if let Some(gsi) = r.free.pop() {
            return Ok(gsi);
        }
        if (r.next_gsi - IOAPIC_PINS) as usize >= MAX_MSI_ROUTES {
            return Err(InterruptError::Exhausted);
        }
        r.next_gsi += 1;
        Ok(r.next_gsi - 1)
    }

    /// Gives `gsi` back (its route removed), for a later device.
    pub fn release(&self, gsi: u32) {
        if let Err(e) = self.set_msi(gsi, None) {
            tracing::warn!("removing GSI {gsi}'s route: {e}");
        }
        let mut r = lock(&self.routes);
        if gsi >= IOAPIC_PINS && gsi < r.next_gsi && !r.free.contains(&gsi) {
            r.free.push(gsi);
        }
    }

    /// Routes `gsi` to `message`, or removes its route (`None`: masked or disabled).
    pub fn set_msi(&self, gsi: u32, message: Option<MsiMessage>) -> Result<(), InterruptError> {
        let mut r = lock(&self.routes);
        let changed = match message {
            Some(m) => r.msi.insert(gsi, m) != Some(m),
            None => r.msi.remove(&gsi).is_some(),
        };
        if !changed {
            return Ok(());
        }
        let table = routing_table(&r.msi, &r.ioapic_only).ok_or(InterruptError::Table)?;
        self.vm
            .set_gsi_routing(&table)
            .map_err(InterruptError::Routing)
    }
}

fn irqchip_entry(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

/// KVM's default routes (GSI 0-15 to both PICs and the IOAPIC, 16-23 to the
/// IOAPIC) but for the `ioapic_only` GSIs, followed by the MSI routes.
fn routing_table(msi: &BTreeMap<u32, MsiMessage>, ioapic_only: &[u32]) -> Option<KvmIrqRouting> {
    let mut table = KvmIrqRouting::new(0).ok()?;
    for gsi in 0..IOAPIC_PINS {
        if gsi < 16 && !ioapic_only.contains(&gsi) {
            let pic = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            table.push(irqchip_entry(gsi, pic, gsi % 8)).ok()?;
        }
        table
            .push(irqchip_entry(gsi, KVM_IRQCHIP_IOAPIC, gsi))
            .ok()?;
    }
    for (&gsi, m) in msi {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        e.u.msi.address_lo = m.address as u32;
        e.u.msi.address_hi = (m.address >> 32) as u32;
        e.u.msi.data = m.data;
        table.push(e).ok()?;
    }
    Some(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_keeps_the_irqchip_routes_and_adds_msi() {
        let mut msi = BTreeMap::new();
        msi.insert(
            24,
            MsiMessage {
                address: 0xfee0_0000,
                data: 0x4021,
            },
        );
        let t = routing_table(&msi, &[]).unwrap();
        let entries = t.as_slice();
        assert_eq!(entries.len(), 16 * 2 + 8 + 1);
        let last = entries[entries.len() - 1];
        assert_eq!((last.gsi, last.type_), (24, KVM_IRQ_ROUTING_MSI));
        // SAFETY: the entry was written as an MSI route just above.
        let (lo, data) = unsafe { (last.u.msi.address_lo, last.u.msi.data) };
        assert_eq!((lo, data), (0xfee0_0000, 0x4021));
        let pins: Vec<u32> = entries
            .iter()
            .filter(|e| e.type_ == KVM_IRQ_ROUTING_IRQCHIP)
            // SAFETY: irqchip entries carry the irqchip member.
            .filter(|e| unsafe { e.u.irqchip.irqchip } == KVM_IRQCHIP_IOAPIC)
            .map(|e| e.gsi)
            .collect();
        assert_eq!(pins, (0..24).collect::<Vec<_>>());
    }

    #[test]
    fn an_ioapic_only_line_leaves_the_pic() {
        let t = routing_table(&BTreeMap::new(), &[5]).unwrap();
        let chips: Vec<u32> = t
            .as_slice()
            .iter()
            .filter(|e| e.gsi == 5)
            // SAFETY: only irqchip entries are in a table without MSI routes.
            .map(|e| unsafe { e.u.irqchip.irqchip })
            .collect();
        assert_eq!(chips, [KVM_IRQCHIP_IOAPIC]);
        let gsi4 = t.as_slice().iter().filter(|e| e.gsi == 4).count();
        assert_eq!(gsi4, 2, "other ISA lines keep the PIC");
    }
}
