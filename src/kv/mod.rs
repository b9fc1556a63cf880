//! TODO

pub mod key;
pub mod store;
