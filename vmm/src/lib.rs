//! Virga's VMM: one process per instance, on rust-vmm crates.
//!
//! A VM is built by [`vm::Vm::start`] as a linear recipe and driven by
//! [`vmm::Vmm`], which hears from vCPU threads and the control API on one channel.
//!
//! - [`config`]: configuration, merged from file and flags, validated up front
//! - [`layout`]: the guest-physical memory map and E820
//! - [`memory`]: guest RAM, 2 MiB-aligned for huge pages
//! - [`boot`]: kernel, initramfs, command line, PVH start_info / zero page
//! - [`acpi`]: RSDP, XSDT, FADT, DSDT, MADT
//! - [`cpu`]: CPUID, MSRs, registers, LAPIC
//! - [`vcpu`]: vCPU threads and their run/pause/stop state machine
//! - [`devices`]: serial, i8042, CMOS RTC, ACPI power management; the port/MMIO buses
//! - [`pci`]: the PCI root complex (ECAM, BAR window), config space, MSI-X
//! - [`virtio`]: the virtio-pci transport and virtio devices
//! - [`interrupts`]: KVM GSI routing for MSI
//! - [`rate_limiter`]: token buckets for disk and NIC limits
//! - [`console`]: where the serial console goes on the host
//! - [`api`]: the HTTP control API on a Unix socket; [`api_client`]: its client
//! - [`metrics`]: exit counters and process memory

/// Stack size of the VMM's own threads. Below 2 MiB on purpose: a 2 MiB stack that
/// happens to be 2 MiB-aligned is backed by a transparent huge page where THP is
/// "always", adding 2 MiB of RSS for a few KiB of stack.
pub const THREAD_STACK_BYTES: usize = 512 << 10;

/// Start of the VMM's last line on stderr: `vmm: exit CODE: WHAT HAPPENED`.
pub const EXIT_LINE: &str = "vmm: exit ";

pub mod acpi;
pub mod api;
pub mod api_client;
pub mod boot;
pub mod coalesced_pio;
pub mod config;
pub mod console;
pub mod cpu;
pub mod devices;
pub mod interrupts;
pub mod jail;
pub mod layout;
mod log;
pub mod memory;
pub mod metrics;
pub mod pci;
pub mod rate_limiter;
pub mod seccomp;
pub mod smbios;
pub mod vcpu;
pub mod virtio;
pub mod vm;
pub mod vmm;

#[cfg(test)]
mod fuzz;
