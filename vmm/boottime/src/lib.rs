//! Boot-time regression checks users run in their pipelines.
//!
//! - [`boot`] boots one variant (kernel, initramfs, command line) once under
//!   the VMM and splits the boot into phases, from the VMM's side and the
//!   guest's console;
//! - [`console`] reads those phases off the console's lines;
//! - [`samples`] is the file a run's boots are kept in (a baseline);
//! - [`stats`] compares two sets of boots;
//! - [`report`] prints a comparison as a table, JSON and JUnit XML.

pub mod boot;
pub mod console;
pub mod report;
pub mod samples;
pub mod stats;
