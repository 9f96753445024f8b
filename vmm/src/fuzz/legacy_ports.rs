//! Port I/O to the legacy devices on the real port bus: COM1 (16550A), the
//! i8042, the CMOS RTC, the ACPI PM registers, the PCI configuration ports
//! and the PCI hotplug registers, random port, width and value.
//!
//! Checked: no panic; every byte the guest transmits reaches the console sink,
//! in order (and nothing else does); the machine is only powered off or reset by
//! the writes meant to do that; the i8042's output buffer stays bounded; the
//! RTC's seconds register always holds a valid BCD or binary second; an
//! eject takes only what is plugged, never the host bridge.

use std::io::Write;
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use crate::devices::irq::IrqLine;
use crate::devices::pci_hotplug::{self, PciHotplug};
use crate::devices::serial::{SerialDevice, COM1_BASE, COM1_LEN};
use crate::devices::{acpi_pm, i8042, rtc, Bus, GuestRequest};
use crate::pci::{ConfigPorts, PciBus, CONFIG_PORTS_BASE, CONFIG_PORTS_LEN};

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Clone, Debug)]
struct Access {
    port: u64,
    width: usize,
    value: u32,
    write: bool,
}

fn access() -> impl Strategy<Value = Access> {
    let port = prop_oneof![
        4 => COM1_BASE..COM1_BASE + COM1_LEN,
        3 => i8042::BASE..i8042::BASE + i8042::LEN,
        2 => rtc::BASE..rtc::BASE + rtc::LEN,
        1 => acpi_pm::BASE..acpi_pm::BASE + acpi_pm::LEN,
        2 => CONFIG_PORTS_BASE..CONFIG_PORTS_BASE + CONFIG_PORTS_LEN,
        1 => pci_hotplug::BASE..pci_hotplug::BASE + pci_hotplug::LEN,
        1 => 0u64..0x1_0000,
    ];
    let width =
        prop_oneof![8 => Just(1usize), 1 => Just(2usize), 1 => Just(4usize), 1 => 0usize..=8];
    let value = prop_oneof![any::<u8>().prop_map(u32::from), any::<u32>()];
    (port, width, value, prop::bool::weighted(0.6)).prop_map(|(port, width, value, write)| Access {
        port,
        width,
        value,
        write,
    })
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), TestCaseError> {
    if ok {
        Ok(())
    } else {
        Err(TestCaseError::fail(what()))
    }
}

fn one(accesses: Vec<Access>) -> Result<(), TestCaseError> {
    let sink = Sink::default();
    let mut bus = Bus::default();
    let serial = SerialDevice::new(IrqLine::new(4).unwrap(), Box::new(sink.clone()));
    bus.insert(COM1_BASE, COM1_LEN, Arc::new(Mutex::new(serial)))
        .unwrap();
    let kbd = i8042::I8042::new(IrqLine::new(i8042::GSI).unwrap());
    bus.insert(i8042::BASE, i8042::LEN, Arc::new(Mutex::new(kbd)))
        .unwrap();
    bus.insert(
        rtc::BASE,
        rtc::LEN,
        Arc::new(Mutex::new(rtc::Rtc::default())),
    )
    .unwrap();
    bus.insert(
        acpi_pm::BASE,
        acpi_pm::LEN,
        Arc::new(Mutex::new(acpi_pm::AcpiPm)),
    )
    .unwrap();
    let pci = Arc::new(PciBus::new());
    bus.insert(
        CONFIG_PORTS_BASE,
        CONFIG_PORTS_LEN,
        Arc::new(Mutex::new(ConfigPorts::new(pci.clone()))),
    )
    .unwrap();
    let ejected = Arc::new(Mutex::new(Vec::new()));
    let hotplug = {
        let ejected = ejected.clone();
        PciHotplug::new(
            pci.clone(),
            Box::new(move |slot, _| ejected.lock().unwrap().push(slot)),
        )
    };
    bus.insert(
        pci_hotplug::BASE,
        pci_hotplug::LEN,
        Arc::new(Mutex::new(hotplug)),
    )
    .unwrap();

    // The UART as the guest programmed it: DLAB (LCR bit 7), loopback (MCR bit 4).
    let (mut lcr, mut mcr) = (0u8, 0u8);
    let mut transmitted = Vec::new();
    let mut output_port_next = false;
    for a in &accesses {
        let bytes = a.value.to_le_bytes();
        let data: Vec<u8> = (0..a.width)
            .map(|i| bytes.get(i).copied().unwrap_or(0))
            .collect();
        if !a.write {
            bus.read(a.port, &mut vec![0u8; a.width]);
            continue;
        }
        let got = bus.write(a.port, &data).ok().flatten();
        let first = data.first().copied();
        // What may ask for a power-off or a reset, and how.
        let allowed = match (a.port, first) {
            (p, Some(v)) if p == acpi_pm::BASE + acpi_pm::SLEEP_CONTROL_OFFSET => (v & 0x20 != 0
                && (v >> 2) & 7 == crate::acpi::S5_SLEEP_TYPE)
                .then_some(GuestRequest::PowerOff),
            (p, Some(acpi_pm::RESET_VALUE)) if p == acpi_pm::BASE + acpi_pm::RESET_OFFSET => {
                Some(GuestRequest::Reboot)
            }
            (0x64, Some(0xfe)) => Some(GuestRequest::Reboot),
            (0x60, Some(v)) if output_port_next && v & 1 == 0 => Some(GuestRequest::Reboot),
            _ => None,
        };
        check(got.is_none() || got == allowed, || {
            format!("{a:?} asked the machine for {got:?}")
        })?;
        match (a.port, first) {
            // Only the commands that take a data byte replace the pending one.
            (0x64, Some(v)) if matches!(v, 0x60 | 0xd1..=0xd4) => output_port_next = v == 0xd1,
            (0x60, Some(_)) => output_port_next = false,
            _ => {}
        }
        match (a.port.wrapping_sub(COM1_BASE), first) {
            (0, Some(v)) if lcr & 0x80 == 0 && mcr & 0x10 == 0 => transmitted.push(v),
            (3, Some(v)) => lcr = v,
            (4, Some(v)) => mcr = v,
            _ => {}
        }
    }
    let out = sink.0.lock().unwrap().clone();
    check(out == transmitted, || {
        format!("console got {out:?}, the guest sent {transmitted:?}")
    })?;

    // The i8042 drains within its buffer's size.
    let mut status = [0u8];
    let mut reads = 0;
    loop {
        bus.read(i8042::BASE + 4, &mut status);
        if status[0] & 1 == 0 {
            break;
        }
        bus.read(i8042::BASE, &mut [0u8]);
        reads += 1;
        check(reads <= 16, || "i8042 output buffer beyond 16 bytes".into())?;
    }

    // The RTC's seconds are a valid second in the mode the guest chose.
    let mut b = [0u8];
    bus.write(rtc::BASE, &[0x0b]).unwrap();
    bus.read(rtc::BASE + 1, &mut b);
    let binary = b[0] & 4 != 0;
    bus.write(rtc::BASE, &[0x00]).unwrap();
    bus.read(rtc::BASE + 1, &mut b);
    let s = b[0];
    let valid = if binary {
        s < 60
    } else {
        s >> 4 < 6 && s & 0xf < 10
    };
    check(valid, || format!("RTC seconds {s:#x} (binary: {binary})"))?;

    // Nothing was plugged: no eject took anything, the host bridge stays.
    check(ejected.lock().unwrap().is_empty(), || {
        format!("ejected {:?}", ejected.lock().unwrap())
    })?;
    let mut id = [0u8; 4];
    bus.write(CONFIG_PORTS_BASE, &0x8000_0000u32.to_le_bytes())
        .unwrap();
    bus.read(CONFIG_PORTS_BASE + 4, &mut id);
    check(u32::from_le_bytes(id) == 0x0008_1b36, || {
        format!("the host bridge reads {id:x?}")
    })
}

#[test]
fn legacy_ports() {
    super::run("legacy_ports", prop::collection::vec(access(), 1..128), one);
}
