//! A type-0 PCI configuration space: header, BARs, a capability list, and per-byte
//! write masks so a guest can only change what hardware would let it.

/// Extended (PCIe) configuration space size, reachable through ECAM.
pub const CONFIG_SPACE_SIZE: usize = 4096;

const VENDOR_ID: usize = 0x00;
const DEVICE_ID: usize = 0x02;
pub const COMMAND: usize = 0x04;
const STATUS: usize = 0x06;
const REVISION: usize = 0x08;
const CLASS_PROG_IF: usize = 0x09;
const HEADER_TYPE: usize = 0x0e;
pub const BAR0: usize = 0x10;
const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
const SUBSYSTEM_ID: usize = 0x2e;
const CAPABILITIES_POINTER: usize = 0x34;
const INTERRUPT_LINE: usize = 0x3c;
const FIRST_CAPABILITY: usize = 0x40;
/// Capabilities live in the legacy 256-byte space.
const CAPABILITY_END: usize = 0x100;

pub const COMMAND_MEMORY_SPACE: u16 = 1 << 1;
const COMMAND_BUS_MASTER: u16 = 1 << 2;
const COMMAND_INTX_DISABLE: u16 = 1 << 10;
const STATUS_CAPABILITIES_LIST: u16 = 1 << 4;
/// 64-bit, non-prefetchable memory BAR.
const BAR_MEM64: u32 = 0b100;

pub const NUM_BARS: usize = 6;

#[derive(Debug, thiserror::Error)]
pub enum ConfigSpaceError {
    #[error("BAR {0} is not free for a 64-bit BAR")]
    BarInUse(usize),
    #[error("BAR size {0:#x} is not a power of two of at least 4 KiB")]
    BarSize(u64),
    #[error("no room left for a {0}-byte capability")]
    CapabilitySpace(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    pub size: u64,
}

/// Identity of a PCI function.
#[derive(Clone, Copy, Debug)]
pub struct PciId {
    pub vendor: u16,
    pub device: u16,
    pub class: u8,
    pub subclass: u8,
    pub prog_if: u8,
    pub revision: u8,
    pub subsystem_vendor: u16,
    pub subsystem: u16,
}

pub struct PciConfig {
    regs: Box<[u8; CONFIG_SPACE_SIZE]>,
    writable: Box<[u8; CONFIG_SPACE_SIZE]>,
    bars: [Option<Bar>; NUM_BARS],
    next_capability: usize,
    last_capability_next_ptr: usize,
}

impl PciConfig {
    pub fn new(id: PciId) -> Self {
        let mut c = PciConfig {
            regs: Box::new([0; CONFIG_SPACE_SIZE]),
            writable: Box::new([0; CONFIG_SPACE_SIZE]),
            bars: [None; NUM_BARS],
            next_capability: FIRST_CAPABILITY,
            last_capability_next_ptr: CAPABILITIES_POINTER,
        };
        c.set_u16(VENDOR_ID, id.vendor);
        c.set_u16(DEVICE_ID, id.device);
        c.regs[REVISION] = id.revision;
        c.regs[CLASS_PROG_IF] = id.prog_if;
        c.regs[CLASS_PROG_IF + 1] = id.subclass;
        c.regs[CLASS_PROG_IF + 2] = id.class;
        c.regs[HEADER_TYPE] = 0;
        c.set_u16(SUBSYSTEM_VENDOR_ID, id.subsystem_vendor);
        c.set_u16(SUBSYSTEM_ID, id.subsystem);
        let command_mask = COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE;
        c.writable[COMMAND..COMMAND + 2].copy_from_slice(&command_mask.to_le_bytes());
        // Interrupt line is scratch space for the OS; no INTx pin (MSI-X only).
        c.writable[INTERRUPT_LINE] = 0xff;
        c
    }

    fn set_u16(&mut self, off: usize, v: u16) {
        self.regs[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn set_u32(&mut self, off: usize, v: u32) {
        self.regs[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    pub fn u16_at(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.regs[off], self.regs[off + 1]])
    }

    pub fn u32_at(&self, off: usize) -> u32 {
        u32::from_le_bytes([
            self.regs[off],
            self.regs[off + 1],
            self.regs[off + 2],
            self.regs[off + 3],
        ])
    }

    /// Declares a 64-bit memory BAR at `index` (using `index + 1` for the high half)
    /// of `size` bytes, placed at `addr` (as firmware would have assigned it).
    pub fn add_bar64(
        &mut self,
        index: usize,
        size: u64,
        addr: u64,
    ) -> Result<(), ConfigSpaceError> {
        if index + 1 >= NUM_BARS || self.bars[index].is_some() || self.bars[index + 1].is_some() {
            return Err(ConfigSpaceError::BarInUse(index));
        }
        if !size.is_power_of_two() || size < 4096 {
            return Err(ConfigSpaceError::BarSize(size));
        }
        self.bars[index] = Some(Bar { size });
        let low = BAR0 + 4 * index;
        let mask = !(size - 1);
        self.writable[low..low + 4].copy_from_slice(&((mask as u32) & !0xf).to_le_bytes());
        self.writable[low + 4..low + 8].copy_from_slice(&((mask >> 32) as u32).to_le_bytes());
        self.set_u32(low, (addr as u32 & !0xf) | BAR_MEM64);
        self.set_u32(low + 4, (addr >> 32) as u32);
        Ok(())
    }

    pub fn bar(&self, index: usize) -> Option<Bar> {
        self.bars.get(index).copied().flatten()
    }

    /// Where the guest placed BAR `index`, if it is a memory BAR.
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        self.bar(index)?;
        let low = BAR0 + 4 * index;
        Some(u64::from(self.u32_at(low) & !0xf) | (u64::from(self.u32_at(low + 4)) << 32))
    }

    pub fn memory_enabled(&self) -> bool {
        self.u16_at(COMMAND) & COMMAND_MEMORY_SPACE != 0
    }

    /// Appends a capability (`body` starts at the byte after ID and next pointer)
    /// and returns its offset. `writable` masks `body`, byte for byte.
    pub fn add_capability(
        &mut self,
        id: u8,
        body: &[u8],
        writable: &[u8],
    ) -> Result<usize, ConfigSpaceError> {
        let len = 2 + body.len();
        let off = self.next_capability;
        if off + len > CAPABILITY_END {
            return Err(ConfigSpaceError::CapabilitySpace(len));
        }
        self.regs[off] = id;
        self.regs[off + 1] = 0;
        self.regs[off + 2..off + len].copy_from_slice(body);
        for (i, m) in writable.iter().take(body.len()).enumerate() {
            self.writable[off + 2 + i] = *m;
        }
        self.regs[self.last_capability_next_ptr] = off as u8;
        self.last_capability_next_ptr = off + 1;
        self.next_capability = (off + len + 3) & !3;
        let status = self.u16_at(STATUS) | STATUS_CAPABILITIES_LIST;
        self.set_u16(STATUS, status);
        Ok(off)
    }

    /// Reads `data.len()` bytes at `offset`; out of range reads as zeros.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.regs.get(offset + i).copied().unwrap_or(0);
        }
    }

    /// Writes through the write mask; returns whether any byte changed.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> bool {
        let mut changed = false;
        for (i, b) in data.iter().enumerate() {
            let Some(off) = offset.checked_add(i).filter(|o| *o < CONFIG_SPACE_SIZE) else {
                break;
            };
            let mask = self.writable[off];
            let new = (self.regs[off] & !mask) | (b & mask);
            changed |= new != self.regs[off];
            self.regs[off] = new;
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> PciId {
        PciId {
            vendor: 0x1af4,
            device: 0x1044,
            class: 0xff,
            subclass: 0,
            prog_if: 0,
            revision: 1,
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        }
    }

    #[test]
    fn header_is_read_only_but_command_is_not() {
        let mut c = PciConfig::new(id());
        assert_eq!(c.u32_at(0), 0x1044_1af4);
        c.write(0, &[0, 0, 0, 0]);
        assert_eq!(c.u32_at(0), 0x1044_1af4, "IDs are read-only");
        c.write(COMMAND, &0xffffu16.to_le_bytes());
        assert_eq!(
            c.u16_at(COMMAND),
            COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE
        );
        assert!(c.memory_enabled());
        let mut out = [0xaa; 4];
        c.read(CONFIG_SPACE_SIZE - 2, &mut out);
        assert_eq!(out, [0; 4], "reads past the end are zero");
        assert!(!c.write(CONFIG_SPACE_SIZE - 1, &[1, 2, 3]));
    }

    #[test]
    fn bar_sizing_and_relocation() {
        let mut c = PciConfig::new(id());
        c.add_bar64(0, 0x8000, 0xc000_0000).unwrap();
        assert_eq!(c.bar_address(0), Some(0xc000_0000));
        assert_eq!(c.u32_at(BAR0) & 0xf, BAR_MEM64);
        // Sizing: write all ones, read back the size mask.
        c.write(BAR0, &[0xff; 4]);
        c.write(BAR0 + 4, &[0xff; 4]);
        assert_eq!(c.u32_at(BAR0), 0xffff_8000 | BAR_MEM64);
        assert_eq!(c.u32_at(BAR0 + 4), 0xffff_ffff);
        c.write(BAR0, &0xd000_0000u32.to_le_bytes());
        c.write(BAR0 + 4, &0u32.to_le_bytes());
        assert_eq!(c.bar_address(0), Some(0xd000_0000));
        assert!(c.add_bar64(0, 0x1000, 0).is_err(), "in use");
        assert!(c.add_bar64(2, 0x1800, 0).is_err(), "not a power of two");
        assert!(
            c.add_bar64(5, 0x1000, 0).is_err(),
            "no room for the high half"
        );
    }

    #[test]
    fn capabilities_chain() {
        let mut c = PciConfig::new(id());
        let a = c.add_capability(0x09, &[1, 2, 3], &[0, 0, 0]).unwrap();
        let b = c
            .add_capability(0x11, &[0; 10], &[0, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0])
            .unwrap();
        assert_eq!(c.regs[CAPABILITIES_POINTER] as usize, a);
        assert_eq!(c.regs[a + 1] as usize, b);
        assert_eq!(c.regs[b + 1], 0);
        assert_eq!(b % 4, 0);
        assert_ne!(c.u16_at(STATUS) & STATUS_CAPABILITIES_LIST, 0);
        c.write(b + 2, &[0xff, 0xff]);
        assert_eq!(
            c.u16_at(b + 2),
            0xc000,
            "only enable/mask bits are writable"
        );
        assert!(c.add_capability(0x09, &[0; 200], &[]).is_err());
    }
}
