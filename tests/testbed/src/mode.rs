//! Choosing where scenarios run.

/// `VIRGA_TESTBED=nested|native` forces a mode; otherwise it is detected.
pub const MODE_ENV: &str = "VIRGA_TESTBED";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Inside an L1 VM under QEMU TCG, whose KVM is fast.
    Nested,
    /// Directly on this host's hardware-backed KVM.
    Native,
}

impl Mode {
    pub fn detect() -> Mode {
        match std::env::var(MODE_ENV).as_deref() {
            Ok("native") => Mode::Native,
            Ok("nested") => Mode::Nested,
            _ if host_kvm_is_hardware() => Mode::Native,
            _ => Mode::Nested,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Nested => "testbed",
            Mode::Native => "native",
        }
    }
}

/// Hardware-backed KVM means the vendor module (kvm_intel / kvm_amd) drives
/// `/dev/kvm`; the emulating nested KVM here is `kvm_pvm`.
pub fn host_kvm_is_hardware() -> bool {
    std::path::Path::new("/dev/kvm").exists()
        && ["kvm_intel", "kvm_amd"]
            .iter()
            .any(|m| std::path::Path::new("/sys/module").join(m).exists())
}
