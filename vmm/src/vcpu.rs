//! vCPU threads: each runs `KVM_RUN` in a loop, dispatches port/MMIO exits to the
//! devices, and parks or stops when the VMM asks.
//!
//! Lifecycle: Running -> (Paused <-> Running)* -> Stopped. The VMM moves every vCPU
//! at once through a [`RunGate`]; a vCPU inside `KVM_RUN` is kicked out with a
//! signal whose handler sets `immediate_exit`, so a kick is never lost between the
//! gate check and the next `KVM_RUN`.

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::coalesced_pio::{CoalescedPort, CoalescedRing};
use crate::devices::{lock, Bus, GuestRequest};
use crate::metrics::VcpuMetrics;

/// Why a vCPU thread ended on its own; the VMM ends the whole VM on any of these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VcpuExitReason {
    PowerOff,
    Reboot,
    /// KVM_EXIT_SHUTDOWN: the guest triple-faulted.
    TripleFault,
    Error(String),
}

const RUNNING: u8 = 0;
const PAUSED: u8 = 1;
const STOPPING: u8 = 2;

struct GateState {
    target: u8,
    parked: usize,
    exited: usize,
}

/// Shared run state of all vCPUs of one VM.
pub struct RunGate {
    /// Lock-free copy of `target` checked before every `KVM_RUN`.
    fast: AtomicU8,
    state: Mutex<GateState>,
    changed: Condvar,
    vcpus: usize,
}

enum GateDecision {
    Run,
    Stop,
}

#[derive(Debug, thiserror::Error)]
#[error("{parked} of {vcpus} vCPUs stopped running within {timeout:?}")]
pub struct GateTimeout {
    parked: usize,
    vcpus: usize,
    timeout: Duration,
}

impl RunGate {
    pub fn new(vcpus: usize) -> Self {
        RunGate {
            fast: AtomicU8::new(RUNNING),
            state: Mutex::new(GateState {
                target: RUNNING,
                parked: 0,
                exited: 0,
            }),
            changed: Condvar::new(),
            vcpus,
        }
    }

    /// Called by a vCPU before entering the guest: blocks while paused.
    fn check(&self) -> GateDecision {
        if self.fast.load(Ordering::Acquire) == RUNNING {
            return GateDecision::Run;
        }
        let mut s = lock(&self.state);
        if s.target == PAUSED {
            s.parked += 1;
            self.changed.notify_all();
            while s.target == PAUSED {
                s = self
                    .changed
                    .wait(s)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            s.parked -= 1;
        }
        if s.target == STOPPING {
            GateDecision::Stop
        } else {
            GateDecision::Run
        }
    }

    fn thread_exited(&self) {
        lock(&self.state).exited += 1;
        self.changed.notify_all();
    }

    fn set(&self, target: u8) {
        let mut s = lock(&self.state);
        s.target = target;
        self.fast.store(target, Ordering::Release);
        self.changed.notify_all();
    }

    /// Waits until every vCPU that is still alive has parked.
    fn wait_parked(&self, timeout: Duration) -> Result<(), GateTimeout> {
        let deadline = Instant::now() + timeout;
        let mut s = lock(&self.state);
        while s.parked + s.exited < self.vcpus {
            let now = Instant::now();
            if now >= deadline {
                return Err(GateTimeout {
                    parked: s.parked + s.exited,
                    vcpus: self.vcpus,
                    timeout,
                });
            }
            s = self
                .changed
                .wait_timeout(s, deadline - now)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
        Ok(())
    }
}

thread_local! {
    /// This thread's `kvm_run`, for the kick signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    KVM_RUN.with(|run| {
        let run = run.get();
        if !run.is_null() {
            // SAFETY: `run` is this thread's kvm_run mapping, set by the vCPU thread
            // before it first enters KVM_RUN and valid until that thread ends (the
            // VcpuFd, which owns the mapping, lives on its stack). A volatile byte
            // store is async-signal-safe; KVM reads it on the next KVM_RUN.
            unsafe { std::ptr::write_volatile(&mut (*run).immediate_exit, 1) };
        }
    });
}

/// Installs the kick handler; call once per process before starting vCPUs.
pub fn register_kick_signal() -> Result<(), vmm_sys_util::errno::Error> {
    register_signal_handler(SIGRTMIN(), kick_handler)
}

pub type ExitSink = Box<dyn Fn(u8, VcpuExitReason) + Send>;

pub struct Vcpu {
    pub id: u8,
    pub fd: VcpuFd,
    /// The VM's queued port writes, replayed before each exit is handled.
    pub coalesced: Option<(CoalescedRing, Arc<CoalescedPort>)>,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub gate: Arc<RunGate>,
    pub metrics: Arc<VcpuMetrics>,
    pub on_exit: ExitSink,
}

impl Vcpu {
    pub fn spawn(self) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name(format!("vcpu{}", self.id))
            .stack_size(crate::THREAD_STACK_BYTES)
            .spawn(move || self.run())
    }

    fn run(mut self) {
        // Before the guest runs a single instruction.
        if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::Vcpu) {
            self.gate.thread_exited();
            (self.on_exit)(self.id, VcpuExitReason::Error(e.to_string()));
            return;
        }
        KVM_RUN.with(|run| run.set(self.fd.get_kvm_run() as *mut kvm_run));
        let outcome = self.run_loop();
        KVM_RUN.with(|run| run.set(std::ptr::null_mut()));
        self.gate.thread_exited();
        if let Some(reason) = outcome {
            (self.on_exit)(self.id, reason);
        }
    }

    /// Replays the guest's queued port writes now.
    fn replay_coalesced(&mut self) {
        if let Some((ring, port)) = &mut self.coalesced {
            port.drain(ring, &self.pio);
        }
    }

    /// Returns why the guest stopped, or None when the VMM stopped this vCPU.
    fn run_loop(&mut self) -> Option<VcpuExitReason> {
        loop {
            if let GateDecision::Stop = self.gate.check() {
                self.replay_coalesced();
                return None;
            }
            match self.fd.run() {
                Ok(exit) => {
                    // What the guest wrote before this exit happened first.
                    if let Some((ring, port)) = &mut self.coalesced {
                        port.drain(ring, &self.pio);
                    }
                    if let Some(reason) = handle_exit(exit, &self.pio, &self.mmio, &self.metrics) {
                        self.replay_coalesced();
                        return Some(reason);
                    }
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    // Kicked (a pause, a stop): what the guest wrote shows.
                    self.replay_coalesced();
                    VcpuMetrics::bump(&self.metrics.interrupted);
                    self.fd.set_kvm_immediate_exit(0);
                }
                Err(e) => return Some(VcpuExitReason::Error(format!("KVM_RUN failed: {e}"))),
            }
        }
    }
}

fn handle_exit(
    exit: VcpuExit<'_>,
    pio: &Bus,
    mmio: &Bus,
    m: &VcpuMetrics,
) -> Option<VcpuExitReason> {
    let request = match exit {
        VcpuExit::IoIn(port, data) => {
            VcpuMetrics::bump(&m.io_in);
            if !pio.read(port.into(), data) {
                VcpuMetrics::bump(&m.io_unclaimed);
                tracing::trace!(port, "read from an unclaimed port");
            }
            None
        }
        VcpuExit::IoOut(port, data) => {
            VcpuMetrics::bump(&m.io_out);
            pio.write(port.into(), data).unwrap_or_else(|_unclaimed| {
                VcpuMetrics::bump(&m.io_unclaimed);
                tracing::trace!(port, "write to an unclaimed port");
                None
            })
        }
        VcpuExit::MmioRead(addr, data) => {
            VcpuMetrics::bump(&m.mmio_read);
            if !mmio.read(addr, data) {
                tracing::trace!(addr, "read from unclaimed MMIO");
            }
            None
        }
        VcpuExit::MmioWrite(addr, data) => {
            VcpuMetrics::bump(&m.mmio_write);
            mmio.write(addr, data).unwrap_or_else(|_unclaimed| {
                tracing::trace!(addr, "write to unclaimed MMIO");
                None
            })
        }
        VcpuExit::Hlt => {
            VcpuMetrics::bump(&m.hlt);
            None
        }
        VcpuExit::Shutdown => return Some(VcpuExitReason::TripleFault),
        VcpuExit::SystemEvent(kind, _) => match kind {
            kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => Some(GuestRequest::PowerOff),
            kvm_bindings::KVM_SYSTEM_EVENT_RESET => Some(GuestRequest::Reboot),
            other => {
                return Some(VcpuExitReason::Error(format!(
                    "unhandled KVM system event {other}"
                )))
            }
        },
        VcpuExit::FailEntry(reason, cpu) => {
            return Some(VcpuExitReason::Error(format!(
                "KVM entry failed: hardware reason {reason:#x} on CPU {cpu}"
            )))
        }
        VcpuExit::InternalError => return Some(VcpuExitReason::Error("KVM internal error".into())),
        other => {
            VcpuMetrics::bump(&m.other);
            return Some(VcpuExitReason::Error(format!(
                "unexpected vCPU exit {other:?}"
            )));
        }
    };
    request.map(|r| match r {
        GuestRequest::PowerOff => VcpuExitReason::PowerOff,
        GuestRequest::Reboot => VcpuExitReason::Reboot,
    })
}

/// Handles to a VM's running vCPU threads.
pub struct VcpuSet {
    gate: Arc<RunGate>,
    threads: Vec<JoinHandle<()>>,
}

impl VcpuSet {
    pub fn new(gate: Arc<RunGate>, threads: Vec<JoinHandle<()>>) -> Self {
        VcpuSet { gate, threads }
    }

    fn kick_all(&self) {
        for t in &self.threads {
            // A thread that already ended cannot be kicked, and need not be.
            let _ = t.kill(SIGRTMIN());
        }
    }

    pub fn pause(&self, timeout: Duration) -> Result<(), GateTimeout> {
        self.gate.set(PAUSED);
        self.kick_all();
        self.gate.wait_parked(timeout)
    }

    pub fn resume(&self) {
        self.gate.set(RUNNING);
    }

    /// Stops every vCPU and waits for its thread.
    pub fn stop(self) {
        self.gate.set(STOPPING);
        self.kick_all();
        for t in self.threads {
            if t.join().is_err() {
                tracing::error!("a vCPU thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_parks_and_releases_threads() {
        let gate = Arc::new(RunGate::new(2));
        gate.set(PAUSED);
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let g = gate.clone();
                std::thread::spawn(move || matches!(g.check(), GateDecision::Stop))
            })
            .collect();
        gate.wait_parked(Duration::from_secs(5)).unwrap();
        assert_eq!(lock(&gate.state).parked, 2);
        gate.set(STOPPING);
        for w in workers {
            assert!(w.join().unwrap(), "parked vCPU sees the stop");
        }
    }

    #[test]
    fn wait_parked_times_out_and_counts_exited_threads() {
        let gate = RunGate::new(2);
        gate.set(PAUSED);
        assert!(gate.wait_parked(Duration::from_millis(20)).is_err());
        gate.thread_exited();
        gate.thread_exited();
        gate.wait_parked(Duration::from_millis(20)).unwrap();
        gate.set(RUNNING);
        assert!(matches!(gate.check(), GateDecision::Run));
    }

    #[test]
    fn unclaimed_addresses_read_as_ones() {
        let bus = Bus::default();
        let m = VcpuMetrics::default();
        let exit = |e: VcpuExit<'_>| handle_exit(e, &bus, &bus, &m);
        let mut data = [0u8; 2];
        assert_eq!(exit(VcpuExit::IoIn(0x80, &mut data)), None);
        assert_eq!(data, [0xff, 0xff]);
        assert_eq!(exit(VcpuExit::IoOut(0x80, &[1])), None);
        let mut wide = [0u8; 4];
        assert_eq!(exit(VcpuExit::MmioRead(0xd000_0000, &mut wide)), None);
        assert_eq!(wide, [0xff; 4]);
        assert_eq!(exit(VcpuExit::MmioWrite(0xd000_0000, &[0; 4])), None);
        assert_eq!(exit(VcpuExit::Shutdown), Some(VcpuExitReason::TripleFault));
        let counts = m.snapshot();
        assert_eq!(
            (counts.io_in, counts.io_out, counts.io_unclaimed),
            (1, 1, 2)
        );
        assert_eq!((counts.mmio_read, counts.mmio_write), (1, 1));
    }
}
