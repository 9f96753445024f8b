//! The picker's tests' disks (`virga_test_support::disks`), and the picker's
//! view of one.

// Test helpers fail the test on any unexpected error; not every test file
// uses every helper.
#![allow(clippy::unwrap_used, dead_code)]

use virga_bootpick::disk::Image;
pub use virga_test_support::disks::*;

pub fn image(file: &tempfile::NamedTempFile) -> Image {
    Image::new(std::fs::File::open(file.path()).unwrap()).unwrap()
}
