//! The arena's device memory: one range of device addresses reserved at
//! start-up for the daemon's life, backed by one physical allocation of the
//! arena's fixed size while sessions may run, and given back to the device
//! after `idle_release` with no session.
//!
//! Every weight and buffer of the backend is a raw device address into the
//! arena, so the arena must come back at the same addresses. CUDA's virtual
//! memory management gives exactly that: `cuMemAddressReserve` once, then
//! `cuMemCreate` + `cuMemMap` + `cuMemSetAccess` to back the range, and
//! `cuMemUnmap` + `cuMemRelease` to give the memory back while the range
//! stays reserved. On release the weights are copied to the host; on the
//! next session they are copied back. Nothing else needs restoring: no
//! session state exists while no slot is taken, the cuBLAS handles keep
//! their workspace address, and the kernels live in the context.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::{result as drv, sys, CudaContext, CudaStream};

use super::arena::SlotPool;
use super::error::CudaError;

/// Device memory behind the arena; see the module doc.
pub struct ArenaMemory {
    ctx: Arc<CudaContext>,
    /// Copies the weights out and back (the weights' own stream).
    stream: Arc<CudaStream>,
    base: u64,
    /// The arena's size rounded up to the device's allocation granularity.
    bytes: usize,
    /// The front of the arena that must survive a release.
    weights_bytes: usize,
    backing: Mutex<Backing>,
    /// What `backing` says, readable without waiting for a release or a
    /// restore in progress (the gauges and `/readyz` ask).
    resident: AtomicBool,
    failed: Mutex<Option<String>>,
}

enum Backing {
    Resident(sys::CUmemGenericAllocationHandle),
    /// Given back; the weights wait on the host.
    Released {
        weights: Vec<u8>,
    },
    /// A release or re-allocation failed half-way: the arena cannot be used.
    Failed(String),
}

fn device_prop(device: sys::CUdevice) -> sys::CUmemAllocationProp {
    // SAFETY: a plain C struct for which all-zero is a valid value.
    let mut prop: sys::CUmemAllocationProp = unsafe { std::mem::zeroed() };
    prop.type_ = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location = sys::CUmemLocation { type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE, id: device };
    prop
}

impl ArenaMemory {
    /// Reserves addresses for `bytes` (rounded up to the granularity) and
    /// backs them. `stream` must belong to `ctx`, which is current.
    pub fn new(
        ctx: Arc<CudaContext>,
        stream: Arc<CudaStream>,
        bytes: u64,
        weights_bytes: u64,
    ) -> Result<ArenaMemory, CudaError> {
        let device = ctx.cu_device();
        // 102: CUDA 13 names it VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED; cudarc, by its older name.
        let vmm = sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_VIRTUAL_ADDRESS_MANAGEMENT_SUPPORTED;
        // SAFETY: a plain query of a valid device.
        if unsafe { drv::device::get_attribute(device, vmm) }? == 0 {
            return Err(CudaError::NoVirtualMemory);
        }
        let prop = device_prop(device);
        let mut granularity = 0usize;
        // SAFETY: out-pointer and a valid property struct.
        unsafe {
            sys::cuMemGetAllocationGranularity(
                &mut granularity,
                &prop,
                sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_MINIMUM,
            )
        }
        .result()?;
        let granularity = granularity.max(1);
        let bytes = usize::try_from(bytes).map_err(|_| CudaError::Missing("an arena that fits usize".into()))?;
        let bytes = bytes.div_ceil(granularity) * granularity;
        let mut base = 0;
        // SAFETY: reserves addresses only; freed in Drop.
        unsafe { sys::cuMemAddressReserve(&mut base, bytes, granularity, 0, 0) }.result()?;
        let memory = ArenaMemory {
            ctx,
            stream,
            base,
            bytes,
            weights_bytes: weights_bytes as usize,
            backing: Mutex::new(Backing::Failed("not yet backed".into())),
            resident: AtomicBool::new(false),
            failed: Mutex::new(None),
        };
        let handle = memory.back()?;
        memory.set(&mut memory.lock(), Backing::Resident(handle));
        Ok(memory)
    }

    /// The arena's first address (fixed for the daemon's life).
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Bytes the arena takes from the device while resident.
    pub fn bytes(&self) -> u64 {
        self.bytes as u64
    }

    /// Whether the arena's memory is held now.
    pub fn is_resident(&self) -> bool {
        self.resident.load(Ordering::Acquire)
    }

    /// Why the arena cannot be used any more, if a release or a
    /// re-allocation failed half-way.
    pub fn failure(&self) -> Option<String> {
        self.failed.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, backing: &mut Backing, to: Backing) {
        self.resident.store(matches!(to, Backing::Resident(_)), Ordering::Release);
        if let Backing::Failed(e) = &to {
            *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.clone());
        }
        *backing = to;
    }

    /// Makes the arena usable: after a release, allocates the same size at
    /// the same addresses again and copies the weights back.
    pub fn ensure_resident(&self) -> Result<(), CudaError> {
        self.restore(&mut self.lock())
    }

    /// Runs `f` (the weights' upload at load time, on the weights' stream)
    /// with the arena resident and kept so: a release waits for it.
    pub fn while_resident<T>(&self, f: impl FnOnce() -> Result<T, CudaError>) -> Result<T, CudaError> {
        let mut backing = self.lock();
        self.restore(&mut backing)?;
        f()
    }

    fn restore(&self, backing: &mut Backing) -> Result<(), CudaError> {
        let weights = match &*backing {
            Backing::Resident(_) => return Ok(()),
            Backing::Failed(e) => return Err(CudaError::ArenaLost(e.clone())),
            Backing::Released { weights } => weights,
        };
        self.ctx.bind_to_thread()?;
        let restored = self.back().and_then(|handle| {
            // SAFETY: the weights region lies at the front of the range just
            // backed; the host copy outlives the synchronised copy.
            unsafe { drv::memcpy_htod_async(self.base, weights.as_slice(), self.stream.cu_stream()) }
                .map_err(CudaError::from)
                .and_then(|()| self.stream.synchronize().map_err(CudaError::from))
                .map(|()| handle)
        });
        match restored {
            Ok(handle) => {
                tracing::info!(bytes = self.bytes, "GPU arena allocated again for a new session");
                self.set(backing, Backing::Resident(handle));
                Ok(())
            }
            Err(e) => {
                self.set(backing, Backing::Failed(e.to_string()));
                Err(e)
            }
        }
    }

    /// Gives the arena's memory back to the device if no slot of `pool` is
    /// taken (checked under the same lock `ensure_resident` takes, so a
    /// session that has just taken a slot waits and then restores it).
    /// Returns whether it was released.
    pub fn release_if_idle(&self, pool: &SlotPool) -> Result<bool, CudaError> {
        let mut backing = self.lock();
        let Backing::Resident(handle) = &*backing else { return Ok(false) };
        if pool.available() < pool.capacity() {
            return Ok(false);
        }
        let handle = *handle;
        match self.save_and_unback(handle) {
            Ok(weights) => {
                tracing::info!(bytes = self.bytes, "GPU arena released: no session for the idle period");
                self.set(&mut backing, Backing::Released { weights });
                Ok(true)
            }
            Err(e) => {
                self.set(&mut backing, Backing::Failed(e.to_string()));
                Err(e)
            }
        }
    }

    /// Physical memory for the whole range, mapped and readable/writable.
    fn back(&self) -> Result<sys::CUmemGenericAllocationHandle, CudaError> {
        let prop = device_prop(self.ctx.cu_device());
        let mut handle = 0;
        // SAFETY: valid out-pointer and property; size is a granularity multiple.
        unsafe { sys::cuMemCreate(&mut handle, self.bytes, &prop, 0) }.result()?;
        let access = sys::CUmemAccessDesc {
            location: prop.location,
            flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
        };
        // SAFETY: the range is ours (reserved in `new`) and unmapped.
        let mapped = unsafe {
            sys::cuMemMap(self.base, self.bytes, 0, handle, 0)
                .result()
                .and_then(|()| sys::cuMemSetAccess(self.base, self.bytes, &access, 1).result())
        };
        if let Err(e) = mapped {
            // SAFETY: undoing what succeeded above; errors add nothing to `e`.
            unsafe {
                let _ = sys::cuMemUnmap(self.base, self.bytes);
                let _ = sys::cuMemRelease(handle);
            }
            return Err(e.into());
        }
        Ok(handle)
    }

    /// Copies the weights to the host, then unmaps and frees the memory.
    fn save_and_unback(&self, handle: sys::CUmemGenericAllocationHandle) -> Result<Vec<u8>, CudaError> {
        self.ctx.bind_to_thread()?;
        // Work still queued on any stream may use the arena.
        self.ctx.synchronize()?;
        let mut weights = vec![0u8; self.weights_bytes];
        // SAFETY: the weights region is mapped; the copy is synchronised
        // before `weights` is used or moved.
        unsafe { drv::memcpy_dtoh_async(weights.as_mut_slice(), self.base, self.stream.cu_stream()) }?;
        self.stream.synchronize()?;
        // SAFETY: the range was mapped by `back`, nothing runs on it.
        unsafe {
            sys::cuMemUnmap(self.base, self.bytes).result()?;
            sys::cuMemRelease(handle).result()?;
        }
        Ok(weights)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Backing> {
        self.backing.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for ArenaMemory {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        // Every stream idle before the memory goes.
        let _ = self.ctx.synchronize();
        // SAFETY: the range and handle were made in `new`/`back`; no work
        // remains on them. Errors at teardown have no one to go to.
        unsafe {
            if let Backing::Resident(handle) = *self.lock() {
                let _ = sys::cuMemUnmap(self.base, self.bytes);
                let _ = sys::cuMemRelease(handle);
            }
            let _ = sys::cuMemAddressFree(self.base, self.bytes);
        }
    }
}
