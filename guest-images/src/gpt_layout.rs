//! The start every disk image built here shares: a protective MBR and an
//! empty GPT over `total` bytes of `file`, 512-byte sectors, ready for the
//! caller's partitions.

use std::fs::File;
use std::path::Path;

use crate::debian::DebianError;
use crate::{io_err, ImageError};

/// A GPT error, as the image builders report it.
pub fn table_error(e: impl std::fmt::Display) -> ImageError {
    ImageError::from(DebianError::Unexpected(format!("GPT: {e}")))
}

/// Writes the protective MBR and an empty partition table; `path` names
/// `file` in errors. Partitions go in with `add_partition_at` and the
/// table with `write`.
pub fn empty_gpt(
    file: &mut File,
    path: &Path,
    total: u64,
) -> Result<gpt::GptDisk<File>, ImageError> {
    let sectors = u32::try_from(total / 512 - 1).map_err(table_error)?;
    gpt::mbr::ProtectiveMBR::with_lb_size(sectors)
        .overwrite_lba0(file)
        .map_err(table_error)?;
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(file.try_clone().map_err(io_err(path))?, None)
        .map_err(table_error)?;
    disk.update_partitions(Default::default())
        .map_err(table_error)?;
    Ok(disk)
}
