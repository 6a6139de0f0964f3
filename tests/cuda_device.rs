//! The ways of having no usable GPU, each a clear error and never a panic;
//! `--device auto` falling back to the CPU.
//!
//! Two environments, both checked in CI on a machine without a GPU:
//! - **no driver library**: nothing named libcuda.so can be loaded;
//! - **a driver that sees no GPU**: Debian's `libcuda1`, unpacked (not
//!   installed) by `scripts/test.sh`, whose directory it puts on
//!   `LD_LIBRARY_PATH`; cuInit then answers CUDA_ERROR_NO_DEVICE.
//!
//! The library search path is read once at process start, so each case runs
//! in a child process of this test binary with the environment it needs:
//! the no-driver child gets `LD_LIBRARY_PATH` without the libcuda directory.
//! A case whose environment cannot be made here (a real driver installed
//! system-wide, or no unpacked libcuda1) prints one SKIP line.

use std::path::Path;
use std::process::Command;

use scribed::backend::cuda::device::{self, DeviceChoice, Resolved};
use scribed::backend::cuda::CudaError;

const CHILD: &str = "SCRIBED_CUDA_DEVICE_CHILD";

/// Runs test `name` of this binary in a child with `ld_path` as
/// LD_LIBRARY_PATH; returns its output, which must show it passed.
fn run_child(name: &str, ld_path: &str) -> String {
    let exe = std::env::current_exe().expect("test binary path");
    let out = Command::new(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env("LD_LIBRARY_PATH", ld_path)
        .output()
        .expect("run child test");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "child {name} failed:\n{text}");
    assert!(text.contains("1 passed"), "child {name} ran nothing:\n{text}");
    text
}

fn ld_path() -> String {
    std::env::var("LD_LIBRARY_PATH").unwrap_or_default()
}

fn has_libcuda(dir: &str) -> bool {
    !dir.is_empty() && Path::new(dir).join("libcuda.so.1").exists()
}

/// Forwards the child's SKIP line, if any, so it is printed once.
fn forward_skip(text: &str) {
    for l in text.lines().filter(|l| l.starts_with("SKIP")) {
        eprintln!("{l}");
    }
}

#[test]
fn without_a_driver_library() {
    let path = ld_path();
    let stripped: Vec<&str> = path.split(':').filter(|d| !has_libcuda(d)).collect();
    forward_skip(&run_child("child_no_driver", &stripped.join(":")));
}

#[test]
fn with_a_driver_but_no_gpu() {
    let path = ld_path();
    if !path.split(':').any(has_libcuda) {
        eprintln!(
            "SKIP cuda_device: no unpacked libcuda1 on LD_LIBRARY_PATH (scripts/test.sh provides it); \
                   the driver-without-GPU path is not checked"
        );
        return;
    }
    forward_skip(&run_child("child_driver_no_device", &path));
}

#[test]
fn child_no_driver() {
    if std::env::var_os(CHILD).is_none() {
        return; // only meaningful in the environment the parent made
    }
    if device::driver_present() {
        println!("SKIP cuda_device: a CUDA driver library is installed system-wide; the no-driver path is not checked");
        return;
    }
    assert!(matches!(device::probe(0), Err(CudaError::NoDriver)));
    assert!(matches!(device::device_count(), Err(CudaError::NoDriver)));
    let err = device::resolve_device(DeviceChoice::Cuda, 0).unwrap_err();
    assert!(err.to_string().contains("no CUDA driver library"), "{err}");
    match device::resolve_device(DeviceChoice::Auto, 0).expect("auto never fails") {
        Resolved::Cpu { reason: Some(r) } => assert!(r.contains("no CUDA driver library"), "{r}"),
        r => panic!("auto without a driver resolved to {r:?}"),
    }
    assert_eq!(device::resolve_device(DeviceChoice::Cpu, 0).unwrap(), Resolved::Cpu { reason: None });
}

#[test]
fn child_driver_no_device() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    assert!(device::driver_present(), "libcuda on LD_LIBRARY_PATH did not load");
    match device::device_count() {
        Ok(n) => {
            // A GPU machine: the no-device path cannot be shown here, but the
            // index check can.
            println!("SKIP cuda_device: this machine has {n} GPU(s); the no-device path is not checked");
            let err = device::probe(n).unwrap_err();
            assert!(matches!(err, CudaError::DeviceOutOfRange { index, count } if index == n && count == n), "{err:?}");
            return;
        }
        Err(CudaError::NoDevice) => {}
        Err(e) => panic!("expected NoDevice, got {e:?}"),
    }
    // Every entry point says the same, without panicking, repeatedly.
    for _ in 0..2 {
        assert!(matches!(device::probe(0), Err(CudaError::NoDevice)));
        assert!(matches!(device::probe(3), Err(CudaError::NoDevice)));
    }
    let err = device::resolve_device(DeviceChoice::Cuda, 0).unwrap_err();
    assert!(err.to_string().contains("reports no GPU"), "{err}");
    match device::resolve_device(DeviceChoice::Auto, 0).expect("auto never fails") {
        Resolved::Cpu { reason: Some(r) } => assert!(r.contains("no GPU"), "{r}"),
        r => panic!("auto without a GPU resolved to {r:?}"),
    }
    assert!(matches!(device::open(0), Err(CudaError::NoDevice)));
}
