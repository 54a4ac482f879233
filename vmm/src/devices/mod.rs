//! Emulated devices: the address-space bus, the serial console and virtio.

pub mod bus;
pub mod serial;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
