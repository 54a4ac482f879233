//! The 16550A serial console at COM1, built on vm-superio, writing what the
//! guest prints to a file or stdout and watching it for a kernel panic.

use std::io::{self, LineWriter, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::BusDevice;

/// The I/O ports of COM1.
pub const COM1_BASE: u64 = 0x3f8;
pub const COM1_LEN: u64 = 8;

/// What Linux prints, at emergency level, when it panics.
const PANIC_MARKER: &[u8] = b"Kernel panic - not syncing";

/// How much console output is kept: a guest must not fill the host's disk.
pub const CONSOLE_LIMIT: u64 = 16 << 20;

/// Raises the serial interrupt through a KVM irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Passes console output through to `inner`, up to `limit` bytes, and sets
/// a flag once the kernel's panic line has gone by (also past the limit), so
/// the VMM can tell a panic-triggered reset from a clean one.
pub struct PanicWatch<W: Write> {
    inner: W,
    window: Vec<u8>,
    panicked: Arc<AtomicBool>,
    left: u64,
}

impl<W: Write> PanicWatch<W> {
    pub fn new(inner: W, panicked: Arc<AtomicBool>, limit: u64) -> Self {
        Self {
            inner,
            window: Vec::with_capacity(PANIC_MARKER.len()),
            panicked,
            left: limit,
        }
    }
}

impl<W: Write> Write for PanicWatch<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            if self.window.len() == PANIC_MARKER.len() {
                self.window.remove(0);
            }
            self.window.push(b);
            if self.window == PANIC_MARKER {
                self.panicked.store(true, Ordering::SeqCst);
            }
        }
        // Console output is best effort: a full disk or a closed stdout must
        // not stop the guest.
        if self.left > 0 {
            let n = buf.len().min(self.left as usize);
            let _ = self.inner.write_all(&buf[..n]);
            self.left -= n as u64;
            if self.left == 0 {
                let _ = self
                    .inner
                    .write_all(b"\n[kata-rs-vmm: console output truncated]\n");
                let _ = self.inner.flush();
            }
        }
        Ok(buf.len())
    }

    /// The UART "flushes" after every byte; the line buffer underneath
    /// writes whole lines instead of one system call per guest byte.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub type ConsoleWriter = PanicWatch<LineWriter<Box<dyn Write + Send>>>;

/// COM1 on the port I/O bus.
pub struct SerialConsole {
    serial: Serial<IrqTrigger, vm_superio::serial::NoEvents, ConsoleWriter>,
}

impl SerialConsole {
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>, panicked: Arc<AtomicBool>) -> Self {
        let writer = PanicWatch::new(LineWriter::new(out), panicked, CONSOLE_LIMIT);
        Self {
            serial: Serial::new(IrqTrigger(irq), writer),
        }
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let ([byte], Ok(offset)) = (data, u8::try_from(offset)) {
            *byte = self.serial.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let ([byte], Ok(offset)) = (data, u8::try_from(offset)) {
            if let Err(e) = self.serial.write(offset, *byte) {
                tracing::debug!(error = ?e, "serial write");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn panic_line_is_noticed_even_byte_by_byte() {
        let flag = Arc::new(AtomicBool::new(false));
        let mut w = PanicWatch::new(Vec::new(), flag.clone(), CONSOLE_LIMIT);
        for b in b"[ 1.0] Kernel panic - not syncin".iter() {
            w.write_all(&[*b]).unwrap();
        }
        assert!(!flag.load(Ordering::SeqCst));
        w.write_all(b"g: Attempted to kill init!\n").unwrap();
        assert!(flag.load(Ordering::SeqCst));
        assert!(w.inner.starts_with(b"[ 1.0] Kernel panic"));
    }

    #[test]
    fn ordinary_output_is_passed_through_without_panic() {
        let flag = Arc::new(AtomicBool::new(false));
        let mut w = PanicWatch::new(Vec::new(), flag.clone(), CONSOLE_LIMIT);
        w.write_all(b"Kernel panics are bad; not syncing is worse\n")
            .unwrap();
        assert!(!flag.load(Ordering::SeqCst));
        assert_eq!(w.inner.len(), 44);
    }

    #[test]
    fn output_past_the_limit_is_dropped_but_still_watched() {
        let flag = Arc::new(AtomicBool::new(false));
        let mut w = PanicWatch::new(Vec::new(), flag.clone(), 10);
        w.write_all(b"0123456").unwrap();
        w.write_all(b"789abcdef").unwrap();
        w.write_all(b"Kernel panic - not syncing").unwrap();
        assert_eq!(
            w.inner,
            b"0123456789\n[kata-rs-vmm: console output truncated]\n"
        );
        assert!(flag.load(Ordering::SeqCst));
    }

    #[test]
    fn transmitted_bytes_reach_the_output_and_raise_the_irq() {
        let sink = Sink::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let flag = Arc::new(AtomicBool::new(false));
        let mut com1 = SerialConsole::new(irq.try_clone().unwrap(), Box::new(sink.clone()), flag);
        // IER: enable the transmitter-empty interrupt.
        com1.write(1, &[0x02]);
        for b in b"hi\n" {
            com1.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi\n");
        assert!(irq.read().unwrap() >= 1);
        // Accesses wider than a byte are ignored rather than misread.
        let mut wide = [0xffu8; 2];
        com1.read(5, &mut wide);
        assert_eq!(wide, [0xff, 0xff]);
    }
}
