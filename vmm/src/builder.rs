//! The one place a VM is assembled: KVM, guest memory, the kernel and
//! initrd, the devices and their interrupt wiring, the boot tables and the
//! vCPUs, in that order, so that bad input fails before anything runs.

use std::fs::OpenOptions;
use std::io::Write;
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, PoisonError};

use linux_loader::cmdline::Cmdline;
use nix::sys::signal::{SigSet, Signal};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch::x86_64::{boot, layout, mptable, regs};
use crate::config::{Console, NetConfig, VmConfig};
use crate::devices::serial::{SerialConsole, COM1_BASE, COM1_LEN};
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::fs::{Fs, FsError};
use crate::devices::virtio::mmio::{MmioError, MmioTransport, NOTIFY_OFFSET};
use crate::devices::virtio::net::{Net, NetBackend, NetError, Tap};
use crate::devices::virtio::vsock::{SocketFile, Vsock, VsockError};
use crate::devices::virtio::worker::DeviceThread;
use crate::devices::virtio::VirtioDevice;
use crate::devices::{Bus, BusError};
use crate::memory::{self, GuestMemory, MemoryError};
use crate::seccomp::{self, SeccompError, SeccompMode, ThreadKind};
use crate::vstate::vcpu::{Vcpu, VcpuError, VcpuExitReason};
use crate::vstate::vm::{Vm, VmError};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    MpTable(#[from] mptable::MpTableError),
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("cannot open console file {path}: {source}")]
    ConsoleFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    #[error("kernel command line: {0}")]
    Cmdline(#[from] linux_loader::cmdline::Error),
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error(transparent)]
    Mmio(#[from] MmioError),
    #[error(transparent)]
    Vsock(#[from] VsockError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("virtio-fs tag {0:?} is given twice")]
    DuplicateFsTag(String),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("{0} is given twice")]
    DuplicateNet(String),
    #[error("no room for another virtio-mmio device (interrupt lines {first}-{last} are taken)")]
    NoDeviceSlot { first: u32, last: u32 },
    #[error("cannot start a vCPU thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("cannot start the {kind} thread: {source}")]
    DeviceThread {
        kind: ThreadKind,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
}

/// How a VM run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest reset itself: its way of shutting down cleanly.
    Stopped,
    /// The guest kernel panicked (seen on the console) and then reset.
    Panicked,
    /// KVM or the guest failed.
    Failed(String),
    /// The VMM was asked to stop by a signal.
    Signalled(i32),
}

impl Outcome {
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Stopped => 0,
            Outcome::Panicked | Outcome::Failed(_) => 1,
            Outcome::Signalled(sig) => 128 + sig,
        }
    }
}

/// A VM ready to run.
pub struct Vmm {
    _vm: Vm,
    _mem: GuestMemory,
    pio: Bus,
    mmio: Bus,
    vcpus: Vec<Vcpu>,
    seccomp: SeccompMode,
    panicked: Arc<AtomicBool>,
    /// Removed by the main thread on every exit: the vCPU threads never
    /// drop the devices, so the devices' own drop never runs.
    socket_files: Vec<SocketFile>,
}

pub fn build(cfg: &VmConfig) -> Result<Vmm, BuildError> {
    // Before any thread is made, so that every thread inherits the mask:
    // one that did not would take a stop signal's default action, killing
    // the VMM without its clean-up.
    stop_signals()
        .thread_block()
        .map_err(|e| BuildError::Thread(e.into()))?;
    // The guest mounts by tag: a second share with the same tag would be
    // unreachable.
    for (i, fs) in cfg.filesystems.iter().enumerate() {
        if cfg.filesystems[..i].iter().any(|f| f.tag == fs.tag) {
            return Err(BuildError::DuplicateFsTag(fs.tag.clone()));
        }
    }
    // Files first: bad input is reported the same with or without KVM.
    let taps = open_taps(&cfg.nets)?;
    let mem = memory::create_guest_memory(cfg.memory_mib)?;
    let kernel = boot::load_kernel(&mem, &cfg.kernel)?;
    let initrd = cfg
        .initrd
        .as_deref()
        .map(|path| boot::load_initrd(&mem, &kernel, path))
        .transpose()?;
    let vm = Vm::new(cfg.vcpus)?;
    vm.map_memory(&mem)?;

    let mut cmdline = Cmdline::new(layout::CMDLINE_MAX_SIZE)?;
    cmdline.insert_str(&cfg.cmdline)?;

    let panicked = Arc::new(AtomicBool::new(false));
    let mut pio = Bus::new();
    let mut mmio = Bus::new();
    let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(BuildError::EventFd)?;
    vm.register_irq(&serial_irq, layout::SERIAL_IRQ)?;
    let console = SerialConsole::new(serial_irq, console_output(&cfg.console)?, panicked.clone());
    pio.insert(Arc::new(Mutex::new(console)), COM1_BASE, COM1_LEN)?;

    let mut slots = VirtioSlots {
        count: 0,
        seccomp: cfg.seccomp,
    };
    let mut socket_files = Vec::new();
    if let Some(vsock) = &cfg.vsock {
        let device = Vsock::new(vsock.guest_cid, &vsock.uds_path)?;
        socket_files.push(device.socket_file());
        slots.attach(&vm, &mem, &mut mmio, &mut cmdline, Box::new(device))?;
    }
    for disk in &cfg.disks {
        let block = Block::new(&disk.path, disk.read_only)?;
        slots.attach(&vm, &mem, &mut mmio, &mut cmdline, Box::new(block))?;
    }
    for fs in &cfg.filesystems {
        let device = Fs::new(&fs.tag, &fs.socket)?;
        slots.attach(&vm, &mem, &mut mmio, &mut cmdline, Box::new(device))?;
    }
    for (net, tap) in cfg.nets.iter().zip(taps) {
        tracing::info!(tap = tap.name(), mac = %net.mac, mtu = ?net.mtu, "virtio-net");
        let device = Net::new(tap, net.mac, net.mtu);
        slots.attach(&vm, &mem, &mut mmio, &mut cmdline, Box::new(device))?;
    }

    boot::load_cmdline(&mem, &cmdline)?;
    let cmdline_len = cmdline.as_cstring().map(|c| c.as_bytes().len())?;
    boot::write_zero_page(&mem, &kernel, initrd, cmdline_len)?;
    mptable::setup(&mem, cfg.vcpus)?;
    regs::write_boot_tables(&mem)?;

    let vcpus = (0..cfg.vcpus)
        .map(|i| Vcpu::new(&vm, i, cfg.vcpus, (i == 0).then_some(kernel.entry)))
        .collect::<Result<Vec<_>, _>>()?;

    Ok(Vmm {
        _vm: vm,
        _mem: mem,
        pio,
        mmio,
        vcpus,
        seccomp: cfg.seccomp,
        panicked,
        socket_files,
    })
}

/// Gets the tap of every network device, in `nets` order. Inherited fds
/// are taken over before any tap is opened by name: a number that was not
/// really inherited could otherwise be a tap this process just opened, which
/// would then have two owners.
fn open_taps(nets: &[NetConfig]) -> Result<Vec<Tap>, BuildError> {
    for (i, net) in nets.iter().enumerate() {
        if nets[..i].iter().any(|n| n.backend == net.backend) {
            return Err(BuildError::DuplicateNet(net.backend.to_string()));
        }
        // Two cards with one address would confuse the guest's ARP and the
        // runtime's matching of NICs by MAC alike.
        if nets[..i].iter().any(|n| n.mac == net.mac) {
            return Err(BuildError::DuplicateNet(format!("MAC {}", net.mac)));
        }
    }
    let mut order: Vec<usize> = (0..nets.len()).collect();
    order.sort_by_key(|&i| matches!(nets[i].backend, NetBackend::Tap(_)));
    let mut taps: Vec<Option<Tap>> = nets.iter().map(|_| None).collect();
    for i in order {
        taps[i] = Some(Tap::open(&nets[i].backend)?);
    }
    Ok(taps.into_iter().flatten().collect())
}

/// Hands out virtio-mmio windows and interrupt lines in order, and wires
/// each device: irqfd for its interrupt, ioeventfds for its queue doorbells,
/// the bus window, and the `virtio_mmio.device=` argument that tells the
/// guest where it is. Each device gets its own thread, confined by its
/// kind's seccomp filter before the guest runs.
struct VirtioSlots {
    count: u32,
    seccomp: SeccompMode,
}

impl VirtioSlots {
    fn attach(
        &mut self,
        vm: &Vm,
        mem: &GuestMemory,
        mmio: &mut Bus,
        cmdline: &mut Cmdline,
        device: Box<dyn VirtioDevice>,
    ) -> Result<(), BuildError> {
        let irq = layout::IRQ_FIRST_DEVICE + self.count;
        if irq > layout::IRQ_LAST_DEVICE {
            return Err(BuildError::NoDeviceSlot {
                first: layout::IRQ_FIRST_DEVICE,
                last: layout::IRQ_LAST_DEVICE,
            });
        }
        let base =
            layout::VIRTIO_MMIO_START + u64::from(self.count) * layout::VIRTIO_MMIO_SLOT_SIZE;
        let irq_evt = EventFd::new(EFD_NONBLOCK).map_err(BuildError::EventFd)?;
        vm.register_irq(&irq_evt, irq)?;
        let kind = device.thread_kind();
        let thread = DeviceThread::spawn(kind, self.seccomp)
            .map_err(|source| BuildError::DeviceThread { kind, source })?;
        let transport = MmioTransport::new(mem.clone(), device, irq_evt, thread)?;
        for (queue, evt) in transport.queue_events().iter().enumerate() {
            vm.register_mmio_doorbell(evt, base + NOTIFY_OFFSET, queue as u32)?;
        }
        tracing::debug!(
            base,
            irq,
            device_type = transport.device_type(),
            "virtio-mmio device"
        );
        mmio.insert(
            Arc::new(Mutex::new(transport)),
            base,
            layout::VIRTIO_MMIO_SLOT_SIZE,
        )?;
        cmdline.insert(
            "virtio_mmio.device",
            &format!("{}K@{base:#x}:{irq}", layout::VIRTIO_MMIO_SLOT_SIZE >> 10),
        )?;
        self.count += 1;
        Ok(())
    }
}

fn console_output(console: &Console) -> Result<Box<dyn Write + Send>, BuildError> {
    Ok(match console {
        Console::Stdout => Box::new(std::io::stdout()),
        Console::Off => Box::new(std::io::sink()),
        Console::File(path) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| BuildError::ConsoleFile {
                    path: path.display().to_string(),
                    source,
                })?,
        ),
    })
}

enum Event {
    Vcpu(u8, VcpuExitReason),
    Signal(Signal),
    Unconfined(SeccompError),
}

/// Signals that stop the VMM; they are blocked in every thread (from the
/// start of [`build`]) and taken by one waiting thread, so a stop always
/// goes through the same exit path.
fn stop_signals() -> SigSet {
    let mut set = SigSet::empty();
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(sig);
    }
    set
}

/// Holds every thread of a starting VM until all have installed their
/// seccomp filters, the main thread's last: no thread reads what the guest
/// writes, and no vCPU runs, before the whole VMM is confined.
#[derive(Default)]
struct StartGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    /// Threads that have tried to install their filter (one that failed
    /// has sent its error first).
    tried: usize,
    /// The main thread's word: whether the threads go on.
    open: Option<bool>,
}

impl StartGate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A started thread's wait, once it has tried to install its filter:
    /// whether the VMM is confined and the thread may go on.
    fn pass(&self) -> bool {
        let mut state = self.lock();
        state.tried += 1;
        self.changed.notify_all();
        let state = self
            .changed
            .wait_while(state, |s| s.open.is_none())
            .unwrap_or_else(PoisonError::into_inner);
        state.open == Some(true)
    }

    /// The main thread's: once the `started` threads have tried, lets
    /// them go on if `go()` says so.
    fn open(&self, started: usize, go: impl FnOnce() -> bool) {
        let mut state = self
            .changed
            .wait_while(self.lock(), |s| s.tried < started)
            .unwrap_or_else(PoisonError::into_inner);
        state.open = Some(go());
        self.changed.notify_all();
    }
}

impl Vmm {
    /// Runs the vCPUs until the guest stops, fails, or a stop signal comes.
    pub fn run(mut self) -> Result<Outcome, BuildError> {
        let gate = Arc::new(StartGate::default());
        let (tx, rx) = mpsc::channel();
        let mut started = 0;
        let confined = self
            .start_threads(&gate, &tx, &mut started)
            .and_then(|()| Ok(seccomp::install(ThreadKind::Main, self.seccomp)?));
        drop(tx);
        let mut unconfined = None;
        gate.open(started, || {
            unconfined = rx.try_recv().ok();
            confined.is_ok() && unconfined.is_none()
        });
        if let Some(event) = unconfined {
            return Ok(self.finish(Ok(event)));
        }
        if let Err(e) = confined {
            self.remove_socket_files();
            return Err(e);
        }
        Ok(self.finish(rx.recv()))
    }

    /// Starts the signal thread and the vCPU threads, counting them in
    /// `started`; each installs its filter and waits at `gate`.
    fn start_threads(
        &mut self,
        gate: &Arc<StartGate>,
        tx: &mpsc::Sender<Event>,
        started: &mut usize,
    ) -> Result<(), BuildError> {
        let mode = self.seccomp;
        let (signals, sig_tx, sig_gate) = (stop_signals(), tx.clone(), gate.clone());
        std::thread::Builder::new()
            .name(ThreadKind::Signals.name().into())
            .spawn(move || {
                if let Err(e) = seccomp::install(ThreadKind::Signals, mode) {
                    let _ = sig_tx.send(Event::Unconfined(e));
                }
                if sig_gate.pass() {
                    if let Ok(sig) = signals.wait() {
                        let _ = sig_tx.send(Event::Signal(sig));
                    }
                }
            })
            .map_err(BuildError::Thread)?;
        *started += 1;
        for mut vcpu in std::mem::take(&mut self.vcpus) {
            let (tx, gate) = (tx.clone(), gate.clone());
            // Never dropped on a vCPU thread, which may hold the last
            // reference: a device's drop (the vsock socket file's removal)
            // makes calls the vCPU filter refuses. The main thread removes
            // the files, and the process ends.
            let buses = ManuallyDrop::new((self.pio.clone(), self.mmio.clone()));
            std::thread::Builder::new()
                .name(format!("vcpu{}", vcpu.index()))
                .spawn(move || {
                    if let Err(e) = seccomp::install(ThreadKind::Vcpu, mode) {
                        let _ = tx.send(Event::Unconfined(e));
                    }
                    if gate.pass() {
                        let reason = vcpu.run(&buses.0, &buses.1);
                        let _ = tx.send(Event::Vcpu(vcpu.index(), reason));
                    }
                })
                .map_err(BuildError::Thread)?;
            *started += 1;
        }
        Ok(())
    }

    /// The outcome of the event that ended the VM; its socket files go.
    fn finish(self, event: Result<Event, mpsc::RecvError>) -> Outcome {
        let outcome = match event {
            Ok(Event::Vcpu(index, reason)) => {
                tracing::debug!(vcpu = index, ?reason, "vCPU stopped");
                match reason {
                    _ if self.panicked.load(Ordering::SeqCst) => Outcome::Panicked,
                    VcpuExitReason::Reset => Outcome::Stopped,
                    VcpuExitReason::TripleFault(regs) => {
                        Outcome::Failed(format!("vCPU {index}: the guest triple-faulted ({regs})"))
                    }
                    VcpuExitReason::Failed(msg) => Outcome::Failed(format!("vCPU {index}: {msg}")),
                }
            }
            Ok(Event::Signal(sig)) => Outcome::Signalled(sig as i32),
            Ok(Event::Unconfined(e)) => Outcome::Failed(e.to_string()),
            Err(_) => Outcome::Failed("all vCPU threads ended without a reason".into()),
        };
        self.remove_socket_files();
        outcome
    }

    fn remove_socket_files(&self) {
        for file in &self.socket_files {
            file.remove();
        }
    }
}
