//! Glance images on this storage host: [`ImageStore`] holds their data, and
//! [`fetch`] brings an image (from here or another storage host, by way of
//! the controller) into a volume made from it.

pub mod fetch;
mod store;

pub use store::{is_image_id, ImageError, ImageStore};
