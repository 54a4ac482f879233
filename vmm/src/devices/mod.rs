//! Emulated devices: the address-space bus, legacy devices and virtio.

pub mod bus;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
