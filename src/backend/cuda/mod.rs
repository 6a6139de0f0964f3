//! The CUDA backend: cudarc (driver API, NVRTC, cuBLAS), all loaded at run
//! time, so the binary builds and starts on machines without CUDA.
//!
//! - [`kernels`]: the CUDA C sources of `kernels/`, embedded in the binary and
//!   compiled with NVRTC for the device's architecture at start-up;
//! - [`arena`]: the layout of the one device allocation (weights, one fixed
//!   slot per session, shared scratch) and the slot pool that admits sessions;
//! - [`backend`]: `CudaBackend`, the `Backend` operations on the GPU
//!   (type-checked only so far: see its module doc);
//! - [`device`]: probing for a driver and a GPU, and `--device auto|cpu|cuda`;
//! - [`error`]: one error type for all of it.
//!
//! Everything here except the actual kernel launches and GEMMs can be, and
//! is, tested on a machine without a GPU (see `kernels/README.md`).

pub mod arena;
pub mod backend;
pub mod device;
pub mod error;
pub mod kernels;

pub use backend::CudaBackend;
pub use device::{check_usable, open, probe, resolve_device, DeviceChoice, DeviceInfo, Resolved};
pub use error::CudaError;
