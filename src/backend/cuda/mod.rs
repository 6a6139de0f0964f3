//! The CUDA backend: cudarc (driver API, NVRTC, cuBLAS), all loaded at run
//! time, so the binary builds and starts on machines without CUDA.
//!
//! - [`kernels`]: the CUDA C sources of `kernels/`, embedded in the binary and
//!   compiled with NVRTC for the device's architecture at start-up;
//! - [`arena`]: the layout of the one device allocation (weights, one fixed
//!   slot per session) and the slot pool that admits sessions;
//! - [`memory`]: the device memory behind the arena (addresses reserved
//!   once, memory given back when idle and taken again);
//! - [`sizing`]: the dry run that measures what the model takes (`ArenaSizer`);
//! - [`backend`]: `CudaBackend`, the `Backend` operations on the GPU;
//! - [`device`]: probing for a driver and a GPU, and `--device auto|cpu|cuda`;
//! - [`error`]: one error type for all of it.
//!
//! All of it runs in CI without a GPU, on the fake CUDA device of
//! `tests/fake_cuda` (`tests/cuda_fake.rs`: every operation against the CPU,
//! a whole model, the daemon); what only a GPU shows (speed, PTX, tensor-core
//! rounding, real concurrency) waits for `benches/gpu.sh` on a lent one.

pub mod arena;
pub mod backend;
pub mod device;
pub mod error;
pub mod kernels;
pub mod memory;
pub mod sizing;

pub use backend::CudaBackend;
pub use device::{check_usable, open, probe, resolve_device, DeviceChoice, DeviceInfo, Resolved};
pub use error::CudaError;
pub use sizing::{ArenaSizer, Footprint};
