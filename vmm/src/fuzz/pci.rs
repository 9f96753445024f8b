//! PCI: config space through ECAM and BAR accesses (virtio common config,
//! device config, notifications, MSI-X table and PBA) of random offset, width
//! and value, on the real root complex with a virtio-rng behind the real
//! virtio-pci transport (MSI-X needs a KVM VM with an irqchip; without
//! /dev/kvm only the host bridge is fuzzed).
//!
//! Checked: no panic; IDs and header type stay read-only; the BAR stays aligned
//! to its size; MSI-X address and data words read back what was written; a
//! guest driving the device to DRIVER_OK with any queue addresses gets a worker
//! or NEEDS_RESET, and the device still tears down (joins its worker) in time.

use std::sync::{Arc, Mutex};

use kvm_ioctls::{Kvm, VmFd};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use crate::devices::BusDevice;
use crate::interrupts::GsiRouter;
use crate::pci::{BarWindow, EcamWindow, PciBus};
use crate::virtio::pci::{VirtioPciDevice, BAR_SIZE};
use crate::virtio::rng::Rng;

const WINDOW: u64 = 0xc000_0000;
/// ECAM offset of slot 1, where the virtio device sits.
const SLOT1: u64 = 1 << 15;

#[derive(Clone, Debug)]
enum Op {
    Ecam {
        offset: u64,
        width: usize,
        value: u64,
        write: bool,
    },
    Bar {
        offset: u64,
        width: usize,
        value: u64,
        write: bool,
    },
    /// Write one MSI-X table word (address low/high, data) and read it back.
    MsixWord { entry: u8, word: u8, value: u32 },
}

fn width() -> impl Strategy<Value = usize> {
    prop_oneof![8 => prop::sample::select(vec![1usize, 2, 4, 8]), 1 => 0usize..=16]
}

fn value() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        Just(0u64),
        Just(u64::MAX),
        // Status values a driver writes on the way to DRIVER_OK.
        prop::sample::select(vec![1u64, 3, 0xb, 0xf, 0x40]),
        0u64..0x100,
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let ecam_offset = prop_oneof![
        4 => (0u64..0x100).prop_map(|o| SLOT1 + o),
        1 => (0u64..0x1000).prop_map(|o| SLOT1 + o),
        1 => 0u64..0x100,
        1 => any::<u64>(),
        1 => 0u64..crate::pci::ECAM_SIZE + 0x1000,
    ];
    let bar_offset = prop_oneof![
        6 => 0u64..0x38,
        1 => (0u64..0x40).prop_map(|o| 0x1000 + o),
        1 => (0u64..0x100).prop_map(|o| 0x2000 + o),
        2 => (0u64..0x10).prop_map(|o| 0x3000 + o),
        2 => (0u64..0x40).prop_map(|o| 0x4000 + o),
        1 => (0u64..0x10).prop_map(|o| 0x6000 + o),
        1 => 0u64..0x1_0000,
        1 => any::<u64>(),
    ];
    prop_oneof![
        3 => (ecam_offset, width(), value(), any::<bool>())
            .prop_map(|(offset, width, value, write)| Op::Ecam { offset, width, value, write }),
        6 => (bar_offset, width(), value(), prop::bool::weighted(0.7))
            .prop_map(|(offset, width, value, write)| Op::Bar { offset, width, value, write }),
        1 => (0u8..4, 0u8..3, any::<u32>())
            .prop_map(|(entry, word, value)| Op::MsixWord { entry, word, value }),
    ]
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), TestCaseError> {
    if ok {
        Ok(())
    } else {
        Err(TestCaseError::fail(what()))
    }
}

fn bytes(value: u64, width: usize) -> Vec<u8> {
    (0..width)
        .map(|i| value.to_le_bytes().get(i).copied().unwrap_or(0))
        .collect()
}

fn u32_at(ecam: &mut EcamWindow, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    ecam.read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn one(kvm: Option<&Kvm>, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let bus = PciBus::new();
    let mut device = None;
    if let Some(kvm) = kvm {
        let vm: Arc<VmFd> = Arc::new(kvm.create_vm().unwrap());
        vm.create_irq_chip().unwrap();
        let router = Arc::new(GsiRouter::new(vm));
        let dev = VirtioPciDevice::new(
            Box::new(Rng::default()),
            super::chains::memory(),
            router,
            WINDOW,
        )
        .unwrap();
        let dev = Arc::new(Mutex::new(dev));
        bus.add(dev.clone()).unwrap();
        device = Some(dev);
    }
    let bus = Arc::new(bus);
    let mut ecam = EcamWindow(bus.clone());
    let mut bars = BarWindow {
        bus: bus.clone(),
        base: WINDOW,
    };
    let ids = [u32_at(&mut ecam, 0), u32_at(&mut ecam, SLOT1)];
    let header = [u32_at(&mut ecam, 0x0c), u32_at(&mut ecam, SLOT1 + 0x0c)];
    // Memory decoding on, so BAR accesses reach the device.
    ecam.write(SLOT1 + 4, &[2, 0]);

    for op in ops {
        match op {
            Op::Ecam {
                offset,
                width,
                value,
                write,
            } => {
                if write {
                    ecam.write(offset, &bytes(value, width));
                } else {
                    ecam.read(offset, &mut vec![0u8; width]);
                }
            }
            Op::Bar {
                offset,
                width,
                value,
                write,
            } => {
                if write {
                    bars.write(offset, &bytes(value, width));
                } else {
                    bars.read(offset, &mut vec![0u8; width]);
                }
            }
            Op::MsixWord { entry, word, value } => {
                let Some(dev) = &device else { continue };
                // Straight at the device's BAR 0, wherever the guest moved it.
                let mut d = crate::devices::lock(dev);
                let offset = 0x4000 + 16 * u64::from(entry) + 4 * u64::from(word);
                crate::pci::PciDevice::bar_write(&mut *d, 0, offset, &value.to_le_bytes());
                let mut back = [0u8; 4];
                crate::pci::PciDevice::bar_read(&mut *d, 0, offset, &mut back);
                // The table has one entry per queue plus one for config.
                let want = if entry < 2 { value } else { 0 };
                check(u32::from_le_bytes(back) == want, || {
                    format!("MSI-X entry {entry} word {word}: wrote {value:#x}, read {back:?}")
                })?;
            }
        }
    }

    check(
        [u32_at(&mut ecam, 0), u32_at(&mut ecam, SLOT1)] == ids
            && [u32_at(&mut ecam, 0x0c), u32_at(&mut ecam, SLOT1 + 0x0c)] == header,
        || "a read-only ID or header register changed".into(),
    )?;
    if let Some(dev) = device {
        let d = crate::devices::lock(&dev);
        let bar = crate::pci::PciDevice::config(&*d).bar_address(0);
        check(bar.is_some_and(|a| a % BAR_SIZE == 0), || {
            format!("BAR 0 at {bar:?}, not aligned to its size")
        })?;
        drop(d);
        // Tearing down joins any worker the guest started.
        drop(bars);
        drop(ecam);
        drop(bus);
        super::within("virtio-pci teardown", move || drop(dev))?;
    }
    Ok(())
}

#[test]
fn pci() {
    let kvm = Kvm::new().ok();
    if kvm.is_none() {
        println!("fuzz pci: no /dev/kvm, so no virtio device behind the host bridge");
    }
    let kvm = kvm.map(Arc::new);
    super::run("pci", prop::collection::vec(op(), 1..64), move |ops| {
        one(kvm.as_deref(), ops)
    });
}
