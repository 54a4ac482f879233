//! Address-space dispatch for trapped guest accesses (MMIO and port I/O).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device that answers guest reads and writes inside the range it was
/// inserted at. `offset` is relative to the start of that range.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} is empty or overlaps an existing device")]
    Overlap { base: u64, len: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Range {
    base: u64,
    len: u64,
}

/// Devices keyed by non-overlapping address ranges. Shared by all vCPU
/// threads; each device sits behind its own lock.
#[derive(Default, Clone)]
pub struct Bus {
    devices: BTreeMap<Range, Arc<Mutex<dyn BusDevice>>>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0);
        let overlaps = end.is_none()
            || self
                .devices
                .keys()
                .any(|r| base < r.base + r.len && r.base < base + len);
        if overlaps {
            return Err(BusError::Overlap { base, len });
        }
        self.devices.insert(Range { base, len }, device);
        Ok(())
    }

    fn resolve(&self, addr: u64) -> Option<(u64, &Arc<Mutex<dyn BusDevice>>)> {
        let (range, dev) = self
            .devices
            .range(
                ..=Range {
                    base: addr,
                    len: u64::MAX,
                },
            )
            .next_back()?;
        (addr - range.base < range.len).then(|| (addr - range.base, dev))
    }

    /// Returns false when no device claims `addr`; the caller decides
    /// whether that is worth logging (the guest probes empty ports at boot).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((offset, dev)) => {
                lock(dev).read(offset, data);
                true
            }
            None => false,
        }
    }

    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((offset, dev)) => {
                lock(dev).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// A device whose lock was poisoned by a panicking vCPU thread is still in a
/// usable state for register accesses; recover it instead of cascading.
fn lock(dev: &Arc<Mutex<dyn BusDevice>>) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    dev.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0 + offset as u8);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn dispatches_by_range_with_relative_offsets() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Echo(10))), 0x1000, 0x10)
            .unwrap();
        bus.insert(Arc::new(Mutex::new(Echo(50))), 0x2000, 0x10)
            .unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x1003, &mut b));
        assert_eq!(b[0], 13);
        assert!(bus.read(0x2000, &mut b));
        assert_eq!(b[0], 50);
        assert!(!bus.read(0x1010, &mut b));
        assert!(!bus.read(0xfff, &mut b));
        assert!(bus.write(0x200f, &[7]));
        assert!(bus.read(0x2001, &mut b));
        assert_eq!(b[0], 8);
    }

    #[test]
    fn rejects_overlapping_and_empty_ranges() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Echo(0))), 0x1000, 0x100)
            .unwrap();
        for (base, len) in [
            (0x10ff, 1),
            (0xf00, 0x101),
            (0x1050, 0x10),
            (0x3000, 0),
            (u64::MAX, 2),
        ] {
            assert_eq!(
                bus.insert(Arc::new(Mutex::new(Echo(0))), base, len),
                Err(BusError::Overlap { base, len })
            );
        }
        bus.insert(Arc::new(Mutex::new(Echo(0))), 0x1100, 0x100)
            .unwrap();
    }
}
