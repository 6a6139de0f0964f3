//! Finding a GPU, and `--device auto|cpu|cuda`.
//!
//! With cudarc's dynamic loading, the first call into a CUDA library that
//! cannot be loaded panics (`CudaContext::new` and `device_count` included).
//! So every path here asks whether the library can be loaded before calling
//! into it, and turns each way of not having a GPU into its own error: no
//! driver library, a driver that sees no device, an index past the last
//! device, a GPU too old for CUDA 13, no NVRTC, no cuBLAS.

use std::sync::{Arc, OnceLock};

use cudarc::driver::{result, sys, CudaContext};

use super::error::CudaError;
use super::kernels;

/// `--device`: where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DeviceChoice {
    /// The GPU when a usable one is found, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

/// What the driver says about one GPU (no context is created to ask).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub index: usize,
    /// Devices the driver sees.
    pub count: usize,
    pub name: String,
    /// (major, minor): the `sm_XY` the kernels are compiled for.
    pub compute_capability: (i32, i32),
    pub total_bytes: u64,
}

impl std::fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (ma, mi) = self.compute_capability;
        write!(
            f,
            "GPU {} ({}, sm_{ma}{mi}, {:.1} GiB)",
            self.index,
            self.name,
            self.total_bytes as f64 / (1u64 << 30) as f64
        )
    }
}

/// Where `--device` resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// The CPU; with `auto`, why the GPU was not used.
    Cpu {
        reason: Option<String>,
    },
    Cuda(DeviceInfo),
}

/// Oldest compute capability CUDA 13's NVRTC compiles for (Turing).
const MIN_CC: (i32, i32) = (7, 5);

/// Whether libcuda can be loaded (asked once: each ask opens the library).
pub fn driver_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    // SAFETY: only tries to dlopen the library by its usual names.
    *PRESENT.get_or_init(|| unsafe { sys::is_culib_present() })
}

/// Whether libcublas and libcublasLt can be loaded.
pub fn cublas_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    // SAFETY: as above.
    *PRESENT
        .get_or_init(|| unsafe { cudarc::cublas::sys::is_culib_present() && cudarc::cublaslt::sys::is_culib_present() })
}

/// cuInit, once per process; its result is kept (the driver's answer does
/// not change while the process runs).
fn init() -> Result<(), CudaError> {
    static INIT: OnceLock<Result<(), sys::CUresult>> = OnceLock::new();
    if !driver_present() {
        return Err(CudaError::NoDriver);
    }
    let r = INIT.get_or_init(|| result::init().map_err(|e| e.0));
    match r {
        Ok(()) => Ok(()),
        Err(sys::CUresult::CUDA_ERROR_NO_DEVICE) => Err(CudaError::NoDevice),
        Err(code) => Err(CudaError::Driver(result::DriverError(*code))),
    }
}

/// Number of GPUs the driver sees; `NoDevice` rather than `Ok(0)`.
pub fn device_count() -> Result<usize, CudaError> {
    init()?;
    let n = result::device::get_count().map_err(no_device)?;
    if n <= 0 {
        return Err(CudaError::NoDevice);
    }
    Ok(n as usize)
}

fn no_device(e: result::DriverError) -> CudaError {
    if e.0 == sys::CUresult::CUDA_ERROR_NO_DEVICE {
        CudaError::NoDevice
    } else {
        CudaError::Driver(e)
    }
}

/// Describes GPU `index` without creating a context (cheap, and leaves no
/// memory behind on the device).
pub fn probe(index: usize) -> Result<DeviceInfo, CudaError> {
    let count = device_count()?;
    if index >= count {
        return Err(CudaError::DeviceOutOfRange { index, count });
    }
    let dev = result::device::get(index as i32).map_err(no_device)?;
    let name = result::device::get_name(dev)?;
    use sys::CUdevice_attribute::*;
    // SAFETY: `dev` came from cuDeviceGet.
    let (major, minor, total) = unsafe {
        (
            result::device::get_attribute(dev, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            result::device::get_attribute(dev, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
            result::device::total_mem(dev)?,
        )
    };
    if (major, minor) < MIN_CC {
        return Err(CudaError::UnsupportedArch { index, major, minor });
    }
    Ok(DeviceInfo { index, count, name, compute_capability: (major, minor), total_bytes: total as u64 })
}

/// Checks GPU `index` and the libraries the backend needs (NVRTC, cuBLAS).
pub fn check_usable(index: usize) -> Result<DeviceInfo, CudaError> {
    let info = probe(index)?;
    if !kernels::nvrtc_present() {
        return Err(CudaError::NoNvrtc);
    }
    if !cublas_present() {
        return Err(CudaError::NoCublas);
    }
    Ok(info)
}

/// Opens GPU `index`: its primary context (~0.2 s) and its free memory.
pub fn open(index: usize) -> Result<(Arc<CudaContext>, DeviceInfo, u64), CudaError> {
    let info = check_usable(index)?;
    let ctx = CudaContext::new(index)?;
    let (free, _total) = ctx.mem_get_info()?;
    Ok((ctx, info, free as u64))
}

/// Resolves `--device` (and `--gpu N`): `cpu` is the CPU; `cuda` is GPU
/// `gpu` or an error saying why not; `auto` is GPU `gpu` when it is usable,
/// else the CPU with the reason (also logged).
pub fn resolve_device(choice: DeviceChoice, gpu: usize) -> Result<Resolved, CudaError> {
    match choice {
        DeviceChoice::Cpu => Ok(Resolved::Cpu { reason: None }),
        DeviceChoice::Cuda => Ok(Resolved::Cuda(check_usable(gpu)?)),
        DeviceChoice::Auto => {
            let reason = match check_usable(gpu) {
                Ok(info) => {
                    tracing::info!("device auto: using {info}");
                    return Ok(Resolved::Cuda(info));
                }
                Err(e) => e.to_string(),
            };
            tracing::info!("device auto: using the CPU ({reason})");
            Ok(Resolved::Cpu { reason: Some(reason) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_needs_no_driver() {
        assert_eq!(resolve_device(DeviceChoice::Cpu, 0).unwrap(), Resolved::Cpu { reason: None });
        assert_eq!(resolve_device(DeviceChoice::Cpu, 99).unwrap(), Resolved::Cpu { reason: None });
    }

    #[test]
    fn device_choice_parses_as_a_flag_value() {
        use clap::ValueEnum;
        assert_eq!(DeviceChoice::from_str("auto", true), Ok(DeviceChoice::Auto));
        assert_eq!(DeviceChoice::from_str("cpu", true), Ok(DeviceChoice::Cpu));
        assert_eq!(DeviceChoice::from_str("cuda", true), Ok(DeviceChoice::Cuda));
        assert!(DeviceChoice::from_str("gpu", true).is_err());
        assert_eq!(DeviceChoice::default(), DeviceChoice::Auto);
    }

    #[test]
    fn display_names_the_gpu() {
        let i = DeviceInfo {
            index: 1,
            count: 2,
            name: "NVIDIA H100 80GB HBM3".into(),
            compute_capability: (9, 0),
            total_bytes: 80 << 30,
        };
        assert_eq!(i.to_string(), "GPU 1 (NVIDIA H100 80GB HBM3, sm_90, 80.0 GiB)");
    }
}
