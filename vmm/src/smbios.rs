//! SMBIOS tables: what `dmidecode`, `/sys/class/dmi/id` and cloud-init's
//! platform detection read about the machine (vendor, product, serial,
//! UUID). Linux finds them without firmware by scanning 0xF0000-0xFFFFF for
//! the SMBIOS 3 entry point, which is where they are written.
//!
//! Layout (SMBIOS 3.x, DSP0134): the 24-byte `_SM3_` entry point, then the
//! structures: type 0 (BIOS information), type 1 (system information),
//! type 127 (end of table). Each structure is its formatted part followed
//! by its strings (each NUL-terminated) and one more NUL.

use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{SMBIOS_END, SMBIOS_START};

/// Longest string in a table; SMBIOS allows more, nothing needs it.
pub const MAX_STRING: usize = 64;
const ENTRY_POINT_LEN: u8 = 0x18;
/// Where the structures go: after the entry point, 16-byte aligned.
const TABLE_OFFSET: u64 = 0x20;

/// What the tables say about the machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmbiosInfo {
    #[serde(default = "default_manufacturer")]
    pub manufacturer: String,
    #[serde(default = "default_product")]
    pub product: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub serial: String,
    /// The system UUID (`/sys/class/dmi/id/product_uuid`), as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default)]
    pub family: String,
}

fn default_manufacturer() -> String {
    "Virga".into()
}

fn default_product() -> String {
    "Virga VM".into()
}

impl Default for SmbiosInfo {
    fn default() -> Self {
        SmbiosInfo {
            manufacturer: default_manufacturer(),
            product: default_product(),
            version: String::new(),
            serial: String::new(),
            uuid: None,
            family: String::new(),
        }
    }
}

impl SmbiosInfo {
    /// Checks what a configuration may hold: short printable ASCII strings
    /// and a well-formed UUID.
    pub fn check(&self) -> Result<(), String> {
        for (name, s) in [
            ("manufacturer", &self.manufacturer),
            ("product", &self.product),
            ("version", &self.version),
            ("serial", &self.serial),
            ("family", &self.family),
        ] {
            if s.len() > MAX_STRING || !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                return Err(format!(
                    "{name}: at most {MAX_STRING} printable ASCII characters"
                ));
            }
        }
        if let Some(u) = &self.uuid {
            parse_uuid(u).ok_or_else(|| format!("uuid {u:?}: not a UUID"))?;
        }
        Ok(())
    }
}

/// A UUID's 16 bytes in SMBIOS order: the first three fields little-endian
/// (SMBIOS 2.6 and later), the rest as written.
fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || text.len() != 36 {
        return None;
    }
    let mut b = [0u8; 16];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    Some(b)
}

/// Appends a structure: its formatted part (type, length, handle, `fields`)
/// and its strings.
fn structure(out: &mut Vec<u8>, kind: u8, handle: u16, fields: &[u8], strings: &[&str]) {
    out.push(kind);
    out.push(4 + fields.len() as u8);
    out.extend_from_slice(&handle.to_le_bytes());
    out.extend_from_slice(fields);
    let present: Vec<&&str> = strings.iter().filter(|s| !s.is_empty()).collect();
    for s in &present {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }
    if present.is_empty() {
        out.push(0);
    }
    out.push(0);
}

/// String numbers for `strings`, 0 for an empty one (SMBIOS: "no string").
fn numbers<const N: usize>(strings: [&str; N]) -> [u8; N] {
    let mut next = 0u8;
    strings.map(|s| {
        if s.is_empty() {
            0
        } else {
            next += 1;
            next
        }
    })
}

/// The structure table for `info`.
pub fn table(info: &SmbiosInfo) -> Vec<u8> {
    let mut t = Vec::new();
    // Type 0: BIOS information.
    let bios = ["Virga", env!("CARGO_PKG_VERSION"), "01/01/2026"];
    let [vendor, version, date] = numbers(bios);
    let mut fields = vec![vendor, version, 0x00, 0xe8, date, 0x00];
    // Characteristics: "not supported" (bit 3); extension byte 2: the BIOS
    // is a virtual machine (bit 4).
    fields.extend_from_slice(&(1u64 << 3).to_le_bytes());
    fields.extend_from_slice(&[0x00, 1 << 4, 0, 0, 0xff, 0xff]);
    structure(&mut t, 0, 0, &fields, &bios);
    // Type 1: system information.
    let system = [
        info.manufacturer.as_str(),
        info.product.as_str(),
        info.version.as_str(),
        info.serial.as_str(),
        "",
        info.family.as_str(),
    ];
    let [manufacturer, product, version, serial, sku, family] = numbers(system);
    let uuid = info.uuid.as_deref().and_then(parse_uuid).unwrap_or([0; 16]);
    let mut fields = vec![manufacturer, product, version, serial];
    fields.extend_from_slice(&uuid);
    // Wake-up type: power switch.
    fields.extend_from_slice(&[0x06, sku, family]);
    structure(&mut t, 1, 1, &fields, &system);
    // Type 127: end of table.
    structure(&mut t, 127, 2, &[], &[]);
    t
}

/// The SMBIOS 3 entry point for a table of `len` bytes at `address`.
fn entry_point(address: u64, len: u32) -> [u8; ENTRY_POINT_LEN as usize] {
    let mut e = [0u8; ENTRY_POINT_LEN as usize];
    e[0..5].copy_from_slice(b"_SM3_");
    e[6] = ENTRY_POINT_LEN;
    e[7] = 3; // version 3.2
    e[8] = 2;
    e[10] = 1; // entry point revision
    e[12..16].copy_from_slice(&len.to_le_bytes());
    e[16..24].copy_from_slice(&address.to_le_bytes());
    let sum = e.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    e[5] = sum.wrapping_neg();
    e
}

#[derive(Debug, thiserror::Error)]
pub enum SmbiosError {
    #[error("SMBIOS tables of {0} bytes do not fit below 1 MiB")]
    TooLarge(u64),
    #[error("writing the SMBIOS tables: {0}")]
    Write(#[from] vm_memory::GuestMemoryError),
}

/// Writes the entry point and the table at [`SMBIOS_START`].
pub fn write_to(memory: &GuestMemoryMmap, info: &SmbiosInfo) -> Result<(), SmbiosError> {
    let table = table(info);
    let at = SMBIOS_START + TABLE_OFFSET;
    let end = at + table.len() as u64;
    if end > SMBIOS_END {
        return Err(SmbiosError::TooLarge(end - SMBIOS_START));
    }
    memory.write_slice(
        &entry_point(at, table.len() as u32),
        GuestAddress(SMBIOS_START),
    )?;
    memory.write_slice(&table, GuestAddress(at))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The strings of the structure starting at `t[0]`, and where the next
    /// one starts.
    fn strings(t: &[u8]) -> (Vec<String>, usize) {
        let mut at = t[1] as usize;
        let mut out = Vec::new();
        loop {
            let end = at + t[at..].iter().position(|&b| b == 0).unwrap();
            if end == at {
                // An empty string ends the set (after none, a second NUL).
                let next = if out.is_empty() { at + 2 } else { at + 1 };
                return (out, next);
            }
            out.push(String::from_utf8(t[at..end].to_vec()).unwrap());
            at = end + 1;
        }
    }

    #[test]
    fn the_tables_say_what_they_were_given() {
        let info = SmbiosInfo {
            manufacturer: "OpenStack Foundation".into(),
            product: "OpenStack Nova".into(),
            version: "".into(),
            serial: "7d5e6a1c-0000-4000-8000-000000000001".into(),
            uuid: Some("7d5e6a1c-0000-4000-8000-000000000001".into()),
            family: "Virtual Machine".into(),
        };
        info.check().unwrap();
        let t = table(&info);
        // Type 0 first, then type 1 with its strings and UUID.
        assert_eq!(t[0], 0);
        let (bios, next) = strings(&t);
        assert_eq!(bios[0], "Virga");
        let sys = &t[next..];
        assert_eq!((sys[0], sys[1]), (1, 0x1b));
        let (s, next1) = strings(sys);
        assert_eq!(
            s,
            [
                "OpenStack Foundation",
                "OpenStack Nova",
                info.serial.as_str(),
                "Virtual Machine"
            ]
        );
        // Manufacturer 1, product 2, version absent (0), serial 3; family 4.
        assert_eq!(&sys[4..8], &[1, 2, 0, 3]);
        assert_eq!(sys[0x1a], 4);
        // The UUID, first fields little-endian.
        assert_eq!(&sys[8..12], &[0x1c, 0x6a, 0x5e, 0x7d]);
        assert_eq!(&sys[14..16], &[0x00, 0x40]);
        // The end-of-table structure closes it.
        let end = &sys[next1..];
        assert_eq!(&end[..4], &[127, 4, 2, 0]);
        assert_eq!(end.len(), 6);
    }

    #[test]
    fn the_entry_point_checks_out() {
        let e = entry_point(0xf0020, 300);
        assert_eq!(&e[..5], b"_SM3_");
        assert_eq!(e.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(u32::from_le_bytes(e[12..16].try_into().unwrap()), 300);
        assert_eq!(u64::from_le_bytes(e[16..24].try_into().unwrap()), 0xf0020);
    }

    #[test]
    fn bad_configurations_are_refused() {
        let mut info = SmbiosInfo::default();
        assert!(info.check().is_ok());
        info.uuid = Some("not-a-uuid".into());
        assert!(info.check().is_err());
        info.uuid = Some("7d5e6a1c00004000800000000000000100".into());
        assert!(info.check().is_err());
        info.uuid = None;
        info.product = "x".repeat(65);
        assert!(info.check().is_err());
        info.product = "tab\there".into();
        assert!(info.check().is_err());
        // Empty strings are absent, not empty.
        let t = table(&SmbiosInfo {
            manufacturer: String::new(),
            product: String::new(),
            ..SmbiosInfo::default()
        });
        assert!(!t.is_empty());
    }
}
