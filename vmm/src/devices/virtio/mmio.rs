//! The virtio-mmio transport, modern interface only (virtio 1.2, section 4.2,
//! register layout version 2).
//!
//! [`MmioTransport`] sits on the MMIO bus and turns the driver's register
//! accesses into feature negotiation, queue configuration and the device
//! status state machine; on DRIVER_OK it hands the configured queues to the
//! [`VirtioDevice`], which from then on runs on its own. Every value the guest
//! writes here is untrusted: bad values are logged and ignored, never trusted
//! for an allocation, an index or an address.

use std::sync::Arc;

use tracing::{debug, warn};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::worker::DeviceThread;
use super::VIRTIO_F_VERSION_1;
use super::{ActivateContext, Interrupt, VirtioDevice, INT_CONFIG_CHANGE, INT_USED_RING};
use crate::devices::BusDevice;
use crate::memory::GuestMemory;

/// "virt" in little endian.
const MAGIC_VALUE: u32 = 0x7472_6976;
/// The modern register layout; the legacy one (1) is not implemented.
const MMIO_VERSION: u32 = 2;
/// "KTRS": who made the device, for the guest's information only.
const VENDOR_ID: u32 = 0x5352_544b;

/// Size of the MMIO window of one device: registers, then the device
/// configuration space from [`CONFIG_OFFSET`].
pub const MMIO_SIZE: u64 = 0x1000;
/// Offset of the QueueNotify register, where the VM builder registers the
/// queue eventfds as KVM ioeventfds (datamatch: the queue index as a u32).
pub const NOTIFY_OFFSET: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;
/// Offset of the device-specific configuration space.
pub const CONFIG_OFFSET: u64 = VIRTIO_MMIO_CONFIG as u64;

/// The driver's initialisation steps, in the order the spec requires
/// (virtio 1.2, 3.1.1): each needs all the previous ones.
const INIT_STEPS: [u32; 4] = [
    VIRTIO_CONFIG_S_ACKNOWLEDGE,
    VIRTIO_CONFIG_S_DRIVER,
    VIRTIO_CONFIG_S_FEATURES_OK,
    VIRTIO_CONFIG_S_DRIVER_OK,
];

#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error("virtio device type {device_type} has no queues")]
    NoQueues { device_type: u32 },
    #[error(
        "virtio device type {device_type}: queue {index} has an invalid size {max_size}: {source}"
    )]
    QueueSize {
        device_type: u32,
        index: usize,
        max_size: u16,
        #[source]
        source: virtio_queue::Error,
    },
    #[error("cannot create the notification eventfd of queue {index}: {source}")]
    QueueEvent {
        index: usize,
        #[source]
        source: std::io::Error,
    },
}

/// One virtio device behind a virtio-mmio register window.
pub struct MmioTransport {
    mem: GuestMemory,
    device: Box<dyn VirtioDevice>,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    queue_events: Vec<EventFd>,
    thread: DeviceThread,
    /// The device status register as the driver sees it.
    status: u32,
    /// Whether the device runs, so that a reset stops it exactly once.
    activated: bool,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
}

impl MmioTransport {
    /// Wraps `device`; `interrupt_evt` is the eventfd the VM builder wires
    /// to the guest interrupt line (a KVM irqfd), `thread` the device's own
    /// thread, handed to it at each activation.
    pub fn new(
        mem: GuestMemory,
        device: Box<dyn VirtioDevice>,
        interrupt_evt: EventFd,
        thread: DeviceThread,
    ) -> Result<Self, MmioError> {
        let device_type = device.device_type();
        let max_sizes = device.queue_max_sizes();
        if max_sizes.is_empty() {
            return Err(MmioError::NoQueues { device_type });
        }
        let mut queues = Vec::with_capacity(max_sizes.len());
        let mut queue_events = Vec::with_capacity(max_sizes.len());
        for (index, &max_size) in max_sizes.iter().enumerate() {
            queues.push(Queue::new(max_size).map_err(|source| MmioError::QueueSize {
                device_type,
                index,
                max_size,
                source,
            })?);
            queue_events.push(
                EventFd::new(EFD_NONBLOCK)
                    .map_err(|source| MmioError::QueueEvent { index, source })?,
            );
        }
        Ok(Self {
            mem,
            device,
            interrupt: Arc::new(Interrupt::new(interrupt_evt)),
            queues,
            queue_events,
            thread,
            status: 0,
            activated: false,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
        })
    }

    /// The notification eventfd of each queue, in queue index order.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// The interrupt line shared with the device (its eventfd is the irqfd).
    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    fn read_register(&self, reg: u32) -> u32 {
        match reg {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC_VALUE,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => {
                let features = self.device.features();
                match self.device_features_sel {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            VIRTIO_MMIO_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| q.max_size().into()),
            VIRTIO_MMIO_QUEUE_READY => self.selected_queue().is_some_and(|q| q.ready()).into(),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => self.status,
            // No shared memory regions: a length of all ones means "absent"
            // (4.2.2), which is what the driver checks for.
            VIRTIO_MMIO_SHM_LEN_LOW
            | VIRTIO_MMIO_SHM_LEN_HIGH
            | VIRTIO_MMIO_SHM_BASE_LOW
            | VIRTIO_MMIO_SHM_BASE_HIGH => u32::MAX,
            VIRTIO_MMIO_CONFIG_GENERATION => self.interrupt.config_generation(),
            _ => {
                debug!(reg, "read of a write-only or unknown virtio-mmio register");
                0
            }
        }
    }

    fn write_register(&mut self, reg: u32, value: u32) {
        match reg {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES => self.write_driver_features(value),
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = value,
            VIRTIO_MMIO_QUEUE_NUM => self.configure_queue(reg, |q| {
                let size = u16::try_from(value).map_err(|_| virtio_queue::Error::InvalidSize)?;
                q.try_set_size(size)
            }),
            VIRTIO_MMIO_QUEUE_READY => match value {
                0 | 1 => self.configure_queue(reg, |q| {
                    q.set_ready(value == 1);
                    Ok(())
                }),
                _ => debug!(value, "invalid QueueReady value ignored"),
            },
            VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(value),
            VIRTIO_MMIO_INTERRUPT_ACK => self
                .interrupt
                .ack(value & (INT_USED_RING | INT_CONFIG_CHANGE)),
            VIRTIO_MMIO_STATUS => self.write_status(value),
            VIRTIO_MMIO_QUEUE_DESC_LOW | VIRTIO_MMIO_QUEUE_DESC_HIGH => {
                self.configure_queue(reg, |q| {
                    let addr = set_half(q.desc_table(), reg == VIRTIO_MMIO_QUEUE_DESC_HIGH, value);
                    q.try_set_desc_table_address(GuestAddress(addr))
                })
            }
            VIRTIO_MMIO_QUEUE_AVAIL_LOW | VIRTIO_MMIO_QUEUE_AVAIL_HIGH => {
                self.configure_queue(reg, |q| {
                    let addr = set_half(q.avail_ring(), reg == VIRTIO_MMIO_QUEUE_AVAIL_HIGH, value);
                    q.try_set_avail_ring_address(GuestAddress(addr))
                })
            }
            VIRTIO_MMIO_QUEUE_USED_LOW | VIRTIO_MMIO_QUEUE_USED_HIGH => {
                self.configure_queue(reg, |q| {
                    let addr = set_half(q.used_ring(), reg == VIRTIO_MMIO_QUEUE_USED_HIGH, value);
                    q.try_set_used_ring_address(GuestAddress(addr))
                })
            }
            // There are no shared memory regions to select.
            VIRTIO_MMIO_SHM_SEL => {}
            _ => debug!(
                reg,
                value, "write to a read-only or unknown virtio-mmio register ignored"
            ),
        }
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_sel as usize)
    }

    /// Applies a queue configuration write, allowed only between FEATURES_OK
    /// and DRIVER_OK (3.1.1): once the device runs it owns the queues.
    fn configure_queue(
        &mut self,
        reg: u32,
        set: impl FnOnce(&mut Queue) -> Result<(), virtio_queue::Error>,
    ) {
        if self.status
            & (VIRTIO_CONFIG_S_FEATURES_OK
                | VIRTIO_CONFIG_S_DRIVER_OK
                | VIRTIO_CONFIG_S_FAILED
                | VIRTIO_CONFIG_S_NEEDS_RESET)
            != VIRTIO_CONFIG_S_FEATURES_OK
        {
            debug!(
                reg,
                status = self.status,
                "queue configuration outside the setup phase ignored"
            );
            return;
        }
        let sel = self.queue_sel;
        match self.queues.get_mut(sel as usize) {
            Some(q) => {
                if let Err(e) = set(q) {
                    debug!(reg, queue = sel, error = %e, "invalid queue configuration ignored");
                }
            }
            None => debug!(
                reg,
                queue = sel,
                "configuration of a queue that does not exist ignored"
            ),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        // Features are negotiated after DRIVER and frozen by FEATURES_OK.
        if self.status & (VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK)
            != VIRTIO_CONFIG_S_DRIVER
        {
            debug!(
                status = self.status,
                "DriverFeatures write outside negotiation ignored"
            );
            return;
        }
        match self.driver_features_sel {
            0 => self.acked_features = set_half(self.acked_features, false, value),
            1 => self.acked_features = set_half(self.acked_features, true, value),
            sel => debug!(
                sel,
                value, "DriverFeatures write to a non-existent bank ignored"
            ),
        }
    }

    fn notify(&self, index: u32) {
        match self.queue_events.get(index as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    warn!(queue = index, error = %e, "cannot signal a queue notification");
                }
            }
            None => debug!(
                queue = index,
                "notification of a queue that does not exist ignored"
            ),
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        if value & VIRTIO_CONFIG_S_FAILED != 0 {
            debug!(
                device_type = self.device.device_type(),
                "the guest driver gave up on the device"
            );
            self.status |= VIRTIO_CONFIG_S_FAILED;
        }
        if self.status & (VIRTIO_CONFIG_S_FAILED | VIRTIO_CONFIG_S_NEEDS_RESET) != 0 {
            // Only a reset leaves these states.
            return;
        }
        let steps: u32 = INIT_STEPS.iter().sum();
        if self.status & !value & steps != 0 {
            debug!(
                status = self.status,
                value, "status bits cannot be cleared without a reset"
            );
        }
        let mut done = 0;
        for bit in INIT_STEPS {
            let wanted = value & bit != 0 && self.status & bit == 0;
            if wanted {
                if self.status & done != done {
                    debug!(
                        status = self.status,
                        value, "status step out of order ignored"
                    );
                    return;
                }
                let accepted = match bit {
                    VIRTIO_CONFIG_S_FEATURES_OK => self.features_acceptable(),
                    VIRTIO_CONFIG_S_DRIVER_OK => self.activate(),
                    _ => true,
                };
                if !accepted {
                    return;
                }
                self.status |= bit;
            }
            done |= bit;
        }
    }

    /// The driver may only accept offered features, and must accept
    /// VERSION_1: this transport has no legacy interface.
    fn features_acceptable(&self) -> bool {
        let offered = self.device.features();
        let unknown = self.acked_features & !offered;
        if unknown != 0 {
            debug!(
                acked = self.acked_features,
                offered, "driver accepted features that were not offered; FEATURES_OK refused"
            );
            return false;
        }
        if self.acked_features & VIRTIO_F_VERSION_1 == 0 {
            debug!("driver did not accept VIRTIO_F_VERSION_1; FEATURES_OK refused");
            return false;
        }
        true
    }

    /// Hands the queues to the device. On failure the device needs a reset:
    /// the guest sees DEVICE_NEEDS_RESET instead of DRIVER_OK.
    fn activate(&mut self) -> bool {
        let device_type = self.device.device_type();
        match self.activate_context() {
            Ok(ctx) => match self.device.activate(ctx) {
                Ok(()) => {
                    self.activated = true;
                    return true;
                }
                Err(e) => debug!(device_type, error = %e, "virtio device activation failed"),
            },
            Err(reason) => debug!(device_type, reason, "virtio device activation refused"),
        }
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        false
    }

    fn activate_context(&self) -> Result<ActivateContext, String> {
        let event_idx = self.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, q) in self.queues.iter().enumerate() {
            // The ring addresses come from the guest: check them now so that
            // the device never starts on a ring outside guest memory.
            if q.ready() && !q.is_valid(&self.mem) {
                return Err(format!("queue {index} lies outside guest memory"));
            }
            let mut copy = Queue::try_from(q.state()).map_err(|e| format!("queue {index}: {e}"))?;
            copy.set_event_idx(event_idx);
            queues.push(copy);
        }
        let queue_events = self
            .queue_events
            .iter()
            .map(EventFd::try_clone)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot duplicate the queue eventfds: {e}"))?;
        Ok(ActivateContext {
            mem: self.mem.clone(),
            queues,
            queue_events,
            interrupt: self.interrupt.clone(),
            acked_features: self.acked_features,
            thread: self.thread.clone(),
        })
    }

    /// Back to the state after power-on (2.4), the device stopped.
    fn reset(&mut self) {
        if self.activated {
            if !self.device.reset() {
                warn!(
                    device_type = self.device.device_type(),
                    "virtio device cannot be reset"
                );
                self.status = VIRTIO_CONFIG_S_NEEDS_RESET;
                return;
            }
            self.activated = false;
        }
        for q in &mut self.queues {
            q.reset();
        }
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.acked_features = 0;
        self.queue_sel = 0;
        self.interrupt.ack(INT_USED_RING | INT_CONFIG_CHANGE);
    }
}

/// Replaces the low or high 32 bits of `old` with `value`.
fn set_half(old: u64, high: bool, value: u32) -> u64 {
    if high {
        (old & 0xffff_ffff) | (u64::from(value) << 32)
    } else {
        (old & !0xffff_ffff) | u64::from(value)
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            data.fill(0);
            self.device.read_config(offset - CONFIG_OFFSET, data);
            return;
        }
        match <&mut [u8; 4]>::try_from(&mut *data) {
            Ok(bytes) if offset % 4 == 0 => {
                *bytes = self.read_register(offset as u32).to_le_bytes();
            }
            _ => {
                debug!(
                    offset,
                    len = data.len(),
                    "virtio-mmio register read of a bad width or alignment"
                );
                data.fill(0);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            self.device.write_config(offset - CONFIG_OFFSET, data);
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(bytes) if offset % 4 == 0 => {
                self.write_register(offset as u32, u32::from_le_bytes(bytes));
            }
            _ => debug!(
                offset,
                len = data.len(),
                "virtio-mmio register write of a bad width or alignment ignored"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use virtio_queue::QueueState;

    use super::*;
    use crate::devices::virtio::ActivateError;

    const FEATURES: u64 = VIRTIO_F_VERSION_1 | 1 << 36 | 1 << 3;
    const CONFIG: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

    #[derive(Default)]
    struct Record {
        activations: Vec<(u64, Vec<QueueState>, usize)>,
        resets: usize,
        config_writes: Vec<(u64, Vec<u8>)>,
    }

    struct FakeDevice {
        record: Arc<Mutex<Record>>,
        fail_activate: bool,
        // The eventfds the device was given, kept so they stay open.
        queue_events: Vec<EventFd>,
    }

    impl VirtioDevice for FakeDevice {
        fn device_type(&self) -> u32 {
            super::super::TYPE_VSOCK
        }

        fn thread_kind(&self) -> crate::seccomp::ThreadKind {
            crate::seccomp::ThreadKind::Block
        }

        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn features(&self) -> u64 {
            FEATURES
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = CONFIG.get(offset as usize + i).copied().unwrap_or(0);
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            let mut r = self.record.lock().unwrap();
            r.config_writes.push((offset, data.to_vec()));
        }
        fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
            if self.fail_activate {
                return Err(ActivateError::Invalid("test".into()));
            }
            let states = ctx.queues.iter().map(Queue::state).collect();
            let mut r = self.record.lock().unwrap();
            r.activations
                .push((ctx.acked_features, states, ctx.queue_events.len()));
            self.queue_events = ctx.queue_events;
            Ok(())
        }
        fn reset(&mut self) -> bool {
            self.record.lock().unwrap().resets += 1;
            self.queue_events.clear();
            true
        }
    }

    /// Queue `i`: descriptor table, available ring and used ring addresses.
    const RINGS: [(u64, u64, u64); 2] = [(0x1000, 0x2000, 0x3000), (0x4000, 0x5000, 0x6000)];
    const ACK: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
    const DRV: u32 = ACK | VIRTIO_CONFIG_S_DRIVER;
    const FOK: u32 = DRV | VIRTIO_CONFIG_S_FEATURES_OK;
    const DOK: u32 = FOK | VIRTIO_CONFIG_S_DRIVER_OK;

    fn transport_with(fail_activate: bool) -> (MmioTransport, Arc<Mutex<Record>>) {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let record = Arc::new(Mutex::new(Record::default()));
        let device = FakeDevice {
            record: record.clone(),
            fail_activate,
            queue_events: Vec::new(),
        };
        let t = MmioTransport::new(
            mem,
            Box::new(device),
            EventFd::new(EFD_NONBLOCK).unwrap(),
            crate::devices::virtio::test_driver::thread(),
        )
        .unwrap();
        (t, record)
    }

    fn transport() -> (MmioTransport, Arc<Mutex<Record>>) {
        transport_with(false)
    }

    fn read32(t: &mut MmioTransport, reg: u32) -> u32 {
        let mut b = [0u8; 4];
        t.read(reg.into(), &mut b);
        u32::from_le_bytes(b)
    }

    fn write32(t: &mut MmioTransport, reg: u32, value: u32) {
        t.write(reg.into(), &value.to_le_bytes());
    }

    fn negotiate(t: &mut MmioTransport, features: u64) {
        write32(t, VIRTIO_MMIO_STATUS, ACK);
        write32(t, VIRTIO_MMIO_STATUS, DRV);
        for sel in 0..2 {
            write32(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel);
            write32(
                t,
                VIRTIO_MMIO_DRIVER_FEATURES,
                (features >> (32 * sel)) as u32,
            );
        }
        write32(t, VIRTIO_MMIO_STATUS, FOK);
    }

    fn setup_queue(t: &mut MmioTransport, index: u32, size: u32) {
        let (desc, avail, used) = RINGS[index as usize];
        write32(t, VIRTIO_MMIO_QUEUE_SEL, index);
        write32(t, VIRTIO_MMIO_QUEUE_NUM, size);
        for (low, addr) in [
            (VIRTIO_MMIO_QUEUE_DESC_LOW, desc),
            (VIRTIO_MMIO_QUEUE_AVAIL_LOW, avail),
            (VIRTIO_MMIO_QUEUE_USED_LOW, used),
        ] {
            write32(t, low, addr as u32);
            write32(t, low + 4, (addr >> 32) as u32);
        }
        write32(t, VIRTIO_MMIO_QUEUE_READY, 1);
    }

    /// The whole driver initialisation, as Linux does it.
    fn initialise(t: &mut MmioTransport) {
        negotiate(t, FEATURES);
        setup_queue(t, 0, 16);
        setup_queue(t, 1, 4);
        write32(t, VIRTIO_MMIO_STATUS, DOK);
    }

    #[test]
    fn identifies_itself() {
        let (mut t, _) = transport();
        assert_eq!(read32(&mut t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_VERSION), 2);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_DEVICE_ID), 19);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_VENDOR_ID), VENDOR_ID);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_SHM_LEN_LOW), u32::MAX);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_SHM_LEN_HIGH), u32::MAX);
        assert_eq!(t.queue_events().len(), 2);
    }

    #[test]
    fn offers_features_in_both_halves() {
        let (mut t, _) = transport();
        for (sel, want) in [(0, FEATURES as u32), (1, (FEATURES >> 32) as u32), (2, 0)] {
            write32(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, sel);
            assert_eq!(read32(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), want);
        }
    }

    #[test]
    fn acked_features_from_both_halves_reach_the_device() {
        let (mut t, record) = transport();
        let acked = VIRTIO_F_VERSION_1 | 1 << 3;
        negotiate(&mut t, acked);
        // A bank past the second one does not exist.
        write32(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 2);
        write32(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, u32::MAX);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_STATUS), FOK);
        // Frozen after FEATURES_OK.
        write32(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        write32(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1 << 4);
        setup_queue(&mut t, 0, 16);
        write32(&mut t, VIRTIO_MMIO_STATUS, DOK);
        assert_eq!(record.lock().unwrap().activations[0].0, acked);
    }

    #[test]
    fn refuses_features_not_offered_or_without_version_1() {
        for acked in [FEATURES | 1 << 40, 1 << 3] {
            let (mut t, record) = transport();
            negotiate(&mut t, acked);
            assert_eq!(read32(&mut t, VIRTIO_MMIO_STATUS), DRV, "acked {acked:#x}");
            // DRIVER_OK without FEATURES_OK is out of order.
            write32(&mut t, VIRTIO_MMIO_STATUS, DRV | VIRTIO_CONFIG_S_DRIVER_OK);
            assert_eq!(read32(&mut t, VIRTIO_MMIO_STATUS), DRV);
            assert!(record.lock().unwrap().activations.is_empty());
        }
    }

    #[test]
    fn configures_queues() {
        let (mut t, record) = transport();
        for (sel, max) in [(0, 16), (1, 8), (2, 0), (u32::MAX, 0)] {
            write32(&mut t, VIRTIO_MMIO_QUEUE_SEL, sel);
            assert_eq!(read32(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), max);
            assert_eq!(read32(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
        }
        negotiate(&mut t, FEATURES);
        setup_queue(&mut t, 0, 16);
        setup_queue(&mut t, 1, 4);
        // Sizes that are too big, not a power of two or beyond u16, and a
        // misaligned ring, are all ignored.
        for bad in [16, 3, 0, 0x1_0004] {
            write32(&mut t, VIRTIO_MMIO_QUEUE_NUM, bad);
        }
        write32(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x4008);
        // A queue that does not exist.
        write32(&mut t, VIRTIO_MMIO_QUEUE_SEL, 7);
        write32(&mut t, VIRTIO_MMIO_QUEUE_NUM, 4);
        write32(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
        write32(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_QUEUE_READY), 1);
        write32(&mut t, VIRTIO_MMIO_STATUS, DOK);

        let r = record.lock().unwrap();
        let (_, queues, events) = &r.activations[0];
        assert_eq!(*events, 2);
        for (i, (q, size)) in queues.iter().zip([16, 4]).enumerate() {
            assert!(q.ready);
            assert_eq!(q.size, size);
            assert_eq!((q.desc_table, q.avail_ring, q.used_ring), RINGS[i]);
        }
    }

    #[test]
    fn queue_configuration_only_during_setup() {
        let (mut t, record) = transport();
        // Before FEATURES_OK.
        write32(&mut t, VIRTIO_MMIO_STATUS, ACK);
        write32(&mut t, VIRTIO_MMIO_STATUS, DRV);
        write32(&mut t, VIRTIO_MMIO_QUEUE_NUM, 4);
        write32(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
        initialise(&mut t);
        // After DRIVER_OK the device owns the queues.
        write32(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
        write32(&mut t, VIRTIO_MMIO_QUEUE_READY, 0);
        write32(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x8000);
        write32(&mut t, VIRTIO_MMIO_QUEUE_NUM, 2);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_QUEUE_READY), 1);
        assert_eq!(t.queues[0].size(), 16);
        assert_eq!(t.queues[0].desc_table(), RINGS[0].0);
        assert_eq!(record.lock().unwrap().activations.len(), 1);
    }

    #[test]
    fn status_sequence_activates_exactly_once() {
        let (mut t, record) = transport();
        write32(&mut t, VIRTIO_MMIO_STATUS, ACK);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_STATUS), ACK);
        // FEATURES_OK before DRIVER is out of order.
        write32(
            &mut t,
            VIRTIO_MMIO_STATUS,
            ACK | VIRTIO_CONFIG_S_FEATURES_OK,
        );
        assert_eq!(read32(&mut t, VIRTIO_MMIO_STATUS), ACK);
        initialise(&mut t);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_STATUS), DOK);
        write32(&mut t, VIRTIO_MMIO_STATUS, DOK);
        // Clearing bits needs a reset.
        write32(&mut t, VIRTIO_MMIO_STATUS, ACK);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_STATUS), DOK);
        assert_eq!(record.lock().unwrap().activations.len(), 1);
        // FAILED sticks until a reset.
        write32(&mut t, VIRTIO_MMIO_STATUS, DOK | VIRTIO_CONFIG_S_FAILED);
        assert_eq!(
            read32(&mut t, VIRTIO_MMIO_STATUS),
            DOK | VIRTIO_CONFIG_S_FAILED
        );
        assert_eq!(record.lock().unwrap().activations.len(), 1);
    }

    #[test]
    fn queue_outside_memory_refuses_activation() {
        let (mut t, record) = transport();
        negotiate(&mut t, FEATURES);
        setup_queue(&mut t, 0, 16);
        write32(&mut t, VIRTIO_MMIO_QUEUE_USED_LOW, 0xfff8);
        write32(&mut t, VIRTIO_MMIO_STATUS, DOK);
        assert_eq!(
            read32(&mut t, VIRTIO_MMIO_STATUS),
            FOK | VIRTIO_CONFIG_S_NEEDS_RESET
        );
        // Nothing but a reset gets out of it.
        write32(&mut t, VIRTIO_MMIO_STATUS, DOK);
        assert_eq!(
            read32(&mut t, VIRTIO_MMIO_STATUS),
            FOK | VIRTIO_CONFIG_S_NEEDS_RESET
        );
        assert!(record.lock().unwrap().activations.is_empty());
        write32(&mut t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_STATUS), 0);
        // The device never ran, so it is not reset.
        assert_eq!(record.lock().unwrap().resets, 0);
        initialise(&mut t);
        assert_eq!(record.lock().unwrap().activations.len(), 1);
    }

    #[test]
    fn failed_activation_needs_reset() {
        let (mut t, _) = transport_with(true);
        initialise(&mut t);
        assert_eq!(
            read32(&mut t, VIRTIO_MMIO_STATUS),
            FOK | VIRTIO_CONFIG_S_NEEDS_RESET
        );
    }

    #[test]
    fn reset_stops_the_device_and_restores_power_on_state() {
        let (mut t, record) = transport();
        initialise(&mut t);
        t.interrupt().signal_used_queue();
        write32(&mut t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(record.lock().unwrap().resets, 1);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_STATUS), 0);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        for q in &t.queues {
            assert!(!q.ready());
            assert_eq!(q.size(), q.max_size());
        }
        // A second reset has no device to stop.
        write32(&mut t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(record.lock().unwrap().resets, 1);
        initialise(&mut t);
        assert_eq!(record.lock().unwrap().activations.len(), 2);
    }

    #[test]
    fn interrupt_status_and_ack() {
        let (mut t, _) = transport();
        assert_eq!(read32(&mut t, VIRTIO_MMIO_CONFIG_GENERATION), 0);
        t.interrupt().signal_used_queue();
        assert_eq!(read32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), INT_USED_RING);
        t.interrupt().signal_config_change();
        assert_eq!(
            read32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS),
            INT_USED_RING | INT_CONFIG_CHANGE
        );
        assert_eq!(read32(&mut t, VIRTIO_MMIO_CONFIG_GENERATION), 1);
        assert_eq!(t.interrupt().eventfd().read().unwrap(), 2);
        write32(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, INT_USED_RING);
        assert_eq!(
            read32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS),
            INT_CONFIG_CHANGE
        );
        write32(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, INT_CONFIG_CHANGE);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    }

    #[test]
    fn queue_notify_signals_the_queue_eventfd() {
        let (mut t, _) = transport();
        initialise(&mut t);
        write32(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        write32(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        write32(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 9);
        assert_eq!(t.queue_events()[1].read().unwrap(), 2);
        assert!(
            t.queue_events()[0].read().is_err(),
            "queue 0 was not notified"
        );
    }

    #[test]
    fn config_space_is_forwarded() {
        let (mut t, record) = transport();
        let mut b = [0u8; 2];
        t.read(CONFIG_OFFSET + 2, &mut b);
        assert_eq!(b, [3, 4]);
        let mut b = [0xffu8; 4];
        t.read(CONFIG_OFFSET + 6, &mut b);
        assert_eq!(b, [7, 8, 0, 0]);
        t.write(CONFIG_OFFSET + 4, &[9]);
        assert_eq!(record.lock().unwrap().config_writes, vec![(4, vec![9])]);
    }

    #[test]
    fn bad_widths_and_alignments_are_ignored() {
        let (mut t, record) = transport();
        let mut b = [0xffu8; 2];
        t.read(u64::from(VIRTIO_MMIO_MAGIC_VALUE), &mut b);
        assert_eq!(b, [0, 0]);
        let mut b = [0xffu8; 8];
        t.read(u64::from(VIRTIO_MMIO_MAGIC_VALUE), &mut b);
        assert_eq!(b, [0; 8]);
        let mut b = [0xffu8; 4];
        t.read(u64::from(VIRTIO_MMIO_MAGIC_VALUE) + 1, &mut b);
        assert_eq!(b, [0; 4]);
        t.read(0, &mut []);

        t.write(u64::from(VIRTIO_MMIO_STATUS), &[1]);
        t.write(u64::from(VIRTIO_MMIO_STATUS), &1u64.to_le_bytes());
        t.write(u64::from(VIRTIO_MMIO_STATUS) + 2, &1u32.to_le_bytes());
        t.write(u64::from(VIRTIO_MMIO_STATUS), &[]);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_STATUS), 0);
        // Read-only and unknown registers.
        write32(&mut t, VIRTIO_MMIO_MAGIC_VALUE, 0);
        write32(&mut t, 0xf0, 1);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_MAGIC_VALUE), MAGIC_VALUE);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW), 0);
        assert!(record.lock().unwrap().config_writes.is_empty());
    }
}
