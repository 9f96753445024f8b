//! Finds what a cloud image boots, without firmware and without mounting
//! anything: the kernel, initramfs and command line its own `/boot` names.
//!
//! The image is hostile: it is read only through [`disk::Image`] (positional
//! reads of one file, bounds-checked), every size read from it is checked
//! against [`Limits`] before anything is allocated, and configuration files
//! are parsed as text, never evaluated. The `virga-bootpick` binary runs this
//! in a process that holds only the image's descriptor, under resource limits
//! and a seccomp filter.
//!
//! - [`disk`]: the image, its partitions (GPT, MBR, or none)
//! - [`loader`]: Boot Loader Spec entries and grub.cfg, as text
//! - [`sandbox`]: the limits and seccomp filter the binary runs under
//! - [`pick`]: the search: BLS entries, then grub.cfg's default entry, then
//!   the newest kernel

pub mod disk;
pub mod loader;
pub mod pick;
pub mod sandbox;

pub use pick::{pick, BootChoice, Limits, PickError};
