//! Every way the CUDA backend can fail, as one error type.
//!
//! cudarc's driver, NVRTC and cuBLAS errors convert with `?`; the variants
//! of our own say what to do about them (install the driver, pick another
//! GPU, lower `max_sessions`), because these reach the user at start-up.

use cudarc::cublas::result::CublasError;
use cudarc::driver::DriverError;
use cudarc::nvrtc::result::NvrtcError;

use super::arena::ArenaError;

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("no CUDA driver library (libcuda.so.1) could be loaded: install the NVIDIA driver, or use --device cpu")]
    NoDriver,
    #[error("the CUDA driver is installed but reports no GPU (CUDA_ERROR_NO_DEVICE)")]
    NoDevice,
    #[error("GPU index {index} is out of range: the driver reports {count} device(s) (0..{count})")]
    DeviceOutOfRange { index: usize, count: usize },
    #[error("NVRTC (libnvrtc.so.13) could not be loaded: install the CUDA 13 runtime compiler (package cuda-nvrtc-13-0, or the PyPI wheel nvidia-cuda-nvrtc) and put it on the library path")]
    NoNvrtc,
    #[error("cuBLAS (libcublas.so.13, libcublasLt.so.13) could not be loaded: install the CUDA 13 cuBLAS library and put it on the library path")]
    NoCublas,
    #[error("GPU {index} has compute capability {major}.{minor}; scribed's kernels need 7.5 (Turing) or newer")]
    UnsupportedArch { index: usize, major: i32, minor: i32 },
    /// An operation larger than the session slot was sized for: the arena
    /// layout and the model disagree (a bug, never a client's doing).
    #[error("{0}: larger than the session slot was sized for")]
    SlotTooSmall(String),
    /// The arena layout or the kernel table lacks a part the backend uses
    /// (a bug).
    #[error("the CUDA backend's {0} is missing")]
    Missing(String),
    #[error("this GPU (or its driver or virtualisation) does not support CUDA virtual memory management (cuMemCreate, cuMemMap), which scribed's arena is built on; use --device cpu")]
    NoVirtualMemory,
    /// Giving the idle arena back or taking it again failed half-way.
    #[error("the GPU arena could not be restored after an idle release: {0}")]
    ArenaLost(String),
    #[error("{file}: NVRTC failed to compile it ({status}):\n{log}")]
    Compile { file: &'static str, status: String, log: String },
    #[error("{file}: NVRTC reported warnings, which scribed treats as errors:\n{log}")]
    CompileWarning { file: &'static str, log: String },
    #[error("CUDA driver: {0}")]
    Driver(#[from] DriverError),
    #[error("NVRTC: {0}")]
    Nvrtc(#[from] NvrtcError),
    #[error("cuBLAS: {0}")]
    Cublas(#[from] CublasError),
    #[error(transparent)]
    Arena(#[from] ArenaError),
}
