//! Coalesced port writes: KVM queues the guest's writes to a registered
//! port in a ring page it shares with the VMM instead of leaving KVM_RUN
//! for each one, and the vCPUs replay them, oldest first, before they
//! handle their next exit, so every device sees its accesses in the order
//! the guest made them.
//!
//! Used for the UART's transmit register while the guest has all of the
//! UART's interrupts off, which is how Linux's console prints: a poll of
//! the line status, then the character, for every character. Half of a
//! boot's exits to the VMM were those writes. With an interrupt enabled
//! the port exits as before, so that a write raises its interrupt at once.

use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_coalesced_mmio, kvm_coalesced_mmio_ring, KVM_COALESCED_MMIO_PAGE_OFFSET};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VmFd};

use crate::devices::{lock, Bus};

/// One mapping of a VM's coalesced ring (all vCPU fds map the same page).
pub struct CoalescedRing {
    ring: NonNull<kvm_coalesced_mmio_ring>,
    page_size: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; entries
// are only taken under `CoalescedPort::drain`'s lock.
unsafe impl Send for CoalescedRing {}

impl CoalescedRing {
    /// Maps the ring through a vCPU's fd (KVM places it at
    /// KVM_COALESCED_MMIO_PAGE_OFFSET pages into that fd's mapping).
    pub fn map(vcpu: &impl AsRawFd) -> std::io::Result<Self> {
        // SAFETY: sysconf reads a constant of the system.
        let page_size = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            n if n > 0 => n as usize,
            _ => return Err(std::io::Error::last_os_error()),
        };
        let offset = libc::off_t::from(KVM_COALESCED_MMIO_PAGE_OFFSET) * page_size as libc::off_t;
        // SAFETY: a new shared mapping of one page of a KVM vCPU fd; the
        // kernel checks the offset and fails the call if there is no ring.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page_size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu.as_raw_fd(),
                offset,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ring = NonNull::new(addr.cast()).ok_or_else(std::io::Error::last_os_error)?;
        Ok(CoalescedRing { ring, page_size })
    }

    /// Entries the page holds, as the kernel computes it.
    fn capacity(&self) -> u32 {
        let entries = (self.page_size - std::mem::size_of::<kvm_coalesced_mmio_ring>())
            / std::mem::size_of::<kvm_coalesced_mmio>();
        u32::try_from(entries).unwrap_or(u32::MAX)
    }

    /// Whether nothing is queued: read without the drain lock, as a vCPU
    /// checks before each exit it handles and the ring is almost always
    /// empty. A write queued just after this looks is replayed at the next
    /// exit, which the guest's next poll of the line status makes.
    fn is_empty(&self) -> bool {
        let ring = self.ring.as_ptr();
        // SAFETY: `ring` points at the mapped page for as long as `self`
        // lives; both indices are plain u32s the kernel and drains update.
        unsafe {
            std::ptr::read_volatile(&raw const (*ring).first)
                == std::ptr::read_volatile(&raw const (*ring).last)
        }
    }

    /// The oldest queued write, if any.
    fn pop(&mut self) -> Option<kvm_coalesced_mmio> {
        let ring = self.ring.as_ptr();
        // SAFETY: `ring` points at the mapped page for as long as `self`
        // lives. The kernel writes `last` and the entries; this side reads
        // them and writes `first` (volatile: another party changes them).
        unsafe {
            let first = std::ptr::read_volatile(&raw const (*ring).first);
            let last = std::ptr::read_volatile(&raw const (*ring).last);
            let capacity = self.capacity();
            if first == last || first >= capacity {
                return None;
            }
            // The entry's contents are read after `last` said it is there.
            std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
            let entries = (&raw const (*ring).coalesced_mmio).cast::<kvm_coalesced_mmio>();
            let entry = std::ptr::read_volatile(entries.add(first as usize));
            std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
            std::ptr::write_volatile(&raw mut (*ring).first, (first + 1) % capacity);
            Some(entry)
        }
    }
}

impl Drop for CoalescedRing {
    fn drop(&mut self) {
        // SAFETY: the page was mapped by `map` and nothing else refers to it.
        unsafe { libc::munmap(self.ring.as_ptr().cast(), self.page_size) };
    }
}

/// One coalesced port of a VM: turned on and off by its device, drained by
/// the vCPUs.
pub struct CoalescedPort {
    vm: Arc<VmFd>,
    port: u64,
    on: Mutex<bool>,
    /// Taken while replaying: every vCPU's mapping is the same ring.
    draining: Mutex<()>,
}

impl CoalescedPort {
    /// None when this KVM cannot coalesce port writes.
    pub fn new(kvm: &Kvm, vm: Arc<VmFd>, port: u16) -> Option<Arc<Self>> {
        kvm.check_extension(Cap::CoalescedPio).then(|| {
            Arc::new(CoalescedPort {
                vm,
                port: u64::from(port),
                on: Mutex::new(false),
                draining: Mutex::new(()),
            })
        })
    }

    /// Queues the port's writes (`true`) or lets each one exit (`false`).
    /// A failure leaves the writes exiting, which is always correct.
    pub fn set(&self, on: bool) {
        let mut current = lock(&self.on);
        if *current == on {
            return;
        }
        let zone = IoEventAddress::Pio(self.port);
        let result = if on {
            self.vm.register_coalesced_mmio(zone, 1)
        } else {
            self.vm.unregister_coalesced_mmio(zone, 1)
        };
        match result {
            Ok(()) => *current = on,
            Err(e) => crate::rate_limited_warn!("coalescing port {:#x}: {e}", self.port),
        }
    }

    /// Replays the queued writes on `pio`, oldest first.
    pub fn drain(&self, ring: &mut CoalescedRing, pio: &Bus) {
        if ring.is_empty() {
            return;
        }
        let _replaying = lock(&self.draining);
        while let Some(entry) = ring.pop() {
            let len = (entry.len as usize).min(entry.data.len());
            // Only ports are registered; a write nothing claims is dropped,
            // as its exit would have been.
            let _ = pio.write(entry.phys_addr, &entry.data[..len]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::{BusDevice, GuestRequest};
    use kvm_ioctls::VcpuExit;

    /// What reached the port, in order.
    #[derive(Default)]
    struct Recorder(Vec<u8>);
    impl BusDevice for Recorder {
        fn read(&mut self, _offset: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) -> Option<GuestRequest> {
            self.0.extend_from_slice(data);
            None
        }
    }

    /// Real-mode code writing "ab" to port 0x3f8, then halting.
    const CODE: &[u8] = &[
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'a', // mov al, 'a'
        0xee, // out dx, al
        0xb0, b'b', // mov al, 'b'
        0xee, // out dx, al
        0xf4, // hlt
    ];

    #[test]
    fn queued_writes_are_replayed_in_order_and_unqueued_ones_exit() {
        let Ok(kvm) = Kvm::new() else {
            println!("no /dev/kvm: nothing to run the guest code on");
            return;
        };
        let vm = Arc::new(kvm.create_vm().unwrap());
        let Some(port) = CoalescedPort::new(&kvm, vm.clone(), 0x3f8) else {
            println!("this KVM cannot coalesce port writes");
            return;
        };
        let mem =
            vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(vm_memory::GuestAddress(0), 0x1000)])
                .unwrap();
        vm_memory::Bytes::write_slice(&mem, CODE, vm_memory::GuestAddress(0)).unwrap();
        let host =
            vm_memory::GuestMemoryBackend::get_host_address(&mem, vm_memory::GuestAddress(0))
                .unwrap();
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: 0x1000,
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is `mem`'s mapping, which outlives the VM here.
        unsafe { vm.set_user_memory_region(region).unwrap() };
        let mut vcpu = vm.create_vcpu(0).unwrap();
        let mut ring = CoalescedRing::map(&vcpu).unwrap();
        let recorder = Arc::new(Mutex::new(Recorder::default()));
        let mut pio = Bus::default();
        pio.insert(0x3f8, 1, recorder.clone()).unwrap();
        let restart = |vcpu: &mut kvm_ioctls::VcpuFd| {
            let mut sregs = vcpu.get_sregs().unwrap();
            sregs.cs.base = 0;
            sregs.cs.selector = 0;
            vcpu.set_sregs(&sregs).unwrap();
            let mut regs = vcpu.get_regs().unwrap();
            regs.rip = 0;
            regs.rflags = 2;
            vcpu.set_regs(&regs).unwrap();
        };

        // Queued: the guest runs to its halt without an exit per write.
        port.set(true);
        restart(&mut vcpu);
        assert!(matches!(vcpu.run().unwrap(), VcpuExit::Hlt));
        assert!(
            lock(&recorder).0.is_empty(),
            "nothing seen before the replay"
        );
        port.drain(&mut ring, &pio);
        assert_eq!(lock(&recorder).0, b"ab");
        port.drain(&mut ring, &pio);
        assert_eq!(lock(&recorder).0, b"ab", "each write once");

        // Not queued: each write exits.
        port.set(false);
        restart(&mut vcpu);
        let mut exits = Vec::new();
        loop {
            match vcpu.run().unwrap() {
                VcpuExit::IoOut(p, data) => exits.push((p, data[0])),
                VcpuExit::Hlt => break,
                other => panic!("unexpected exit {other:?}"),
            }
        }
        assert_eq!(exits, [(0x3f8, b'a'), (0x3f8, b'b')]);
        port.drain(&mut ring, &pio);
        assert_eq!(lock(&recorder).0, b"ab");
    }
}
