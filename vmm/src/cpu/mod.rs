//! Per-vCPU architectural state at power-on: CPUID, MSRs, registers, FPU, LAPIC.

pub mod cpuid;
pub mod regs;
