//! Every kernel in `kernels/` compiles with NVRTC for the GPUs scribed runs
//! on, with no warning — on a machine without a GPU or a CUDA install.
//!
//! NVRTC comes from the PyPI wheel `nvidia-cuda-nvrtc==13.0.88`, which
//! `scripts/test.sh` fetches and puts on `LD_LIBRARY_PATH` before the test
//! processes start (the loader reads it once, at process start). Where NVRTC
//! cannot be loaded these tests print one SKIP line and pass, so a plain
//! `cargo test` works anywhere.

use std::sync::Once;

use scribed::backend::cuda::kernels::{self, Source};
use scribed::backend::cuda::CudaError;

fn nvrtc_or_skip() -> bool {
    static SKIP_LINE: Once = Once::new();
    let present = kernels::nvrtc_present();
    if !present {
        SKIP_LINE.call_once(|| {
            eprintln!(
                "SKIP kernels_nvrtc: libnvrtc.so.13 cannot be loaded (scripts/test.sh fetches it from \
                       the nvidia-cuda-nvrtc wheel and sets LD_LIBRARY_PATH)"
            );
        });
    }
    present
}

#[test]
fn every_kernel_compiles_for_sm_90_without_warnings() {
    if !nvrtc_or_skip() {
        return;
    }
    let (major, minor) = kernels::nvrtc_version().expect("NVRTC version");
    eprintln!("NVRTC {major}.{minor}");
    let mut spills = Vec::new();
    for src in kernels::SOURCES {
        let t = std::time::Instant::now();
        let cubin = match kernels::compile(src, 9, 0, true) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert!(!cubin.image.is_empty(), "{}: empty CUBIN", src.file);
        // An ELF image, as cuModuleLoadData expects a CUBIN to be.
        assert_eq!(&cubin.image[..4], b"\x7fELF", "{}: not a CUBIN", src.file);
        let res = kernels::ptxas_resources(&cubin.log);
        for f in src.functions {
            let r = res
                .iter()
                .find(|r| r.function == *f)
                .unwrap_or_else(|| panic!("{}: ptxas reported nothing for {f}:\n{}", src.file, cubin.log));
            eprintln!(
                "{:<22} {:<18} {:>3} registers  {:>5} B smem  spills {}/{} B  ({} ms)",
                src.file,
                f,
                r.registers,
                r.shared_bytes,
                r.spill_stores,
                r.spill_loads,
                t.elapsed().as_millis()
            );
            if r.spill_stores + r.spill_loads > 0 {
                spills.push(format!("{f}: {} B stored, {} B loaded", r.spill_stores, r.spill_loads));
            }
        }
    }
    assert!(spills.is_empty(), "register spills: {spills:?}");
}

#[test]
fn every_kernel_compiles_for_the_other_supported_architectures() {
    if !nvrtc_or_skip() {
        return;
    }
    // Turing (the oldest CUDA 13 supports), Ampere, Ada, Blackwell.
    for (major, minor) in [(7, 5), (8, 0), (8, 6), (8, 9), (10, 0), (12, 0)] {
        for src in kernels::SOURCES {
            if let Err(e) = kernels::compile(src, major, minor, false) {
                panic!("sm_{major}{minor}: {e}");
            }
        }
    }
}

static BROKEN: Source = Source {
    file: "kernels/broken.cu",
    text: "#include \"common.cuh\"\nextern \"C\" __global__ void broken(float* x) {\n    x[0] = undefined_name;\n}\n",
    functions: &["broken"],
};

static WARNS: Source = Source {
    file: "kernels/warns.cu",
    text: "#include \"common.cuh\"\nextern \"C\" __global__ void warns(float* x) {\n    int unused = 3;\n    x[0] = 1.0f;\n}\n",
    functions: &["warns"],
};

#[test]
fn a_compile_error_names_the_file_and_line_and_carries_the_log() {
    if !nvrtc_or_skip() {
        return;
    }
    let err = kernels::compile(&BROKEN, 9, 0, false).expect_err("must not compile");
    assert!(matches!(err, CudaError::Compile { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("kernels/broken.cu(3)"), "{msg}");
    assert!(msg.contains("undefined_name"), "{msg}");
}

#[test]
fn a_warning_fails_the_compile() {
    if !nvrtc_or_skip() {
        return;
    }
    let err = kernels::compile(&WARNS, 9, 0, false).expect_err("warnings are errors");
    assert!(matches!(err, CudaError::CompileWarning { .. }), "{err:?}");
    assert!(err.to_string().contains("kernels/warns.cu(3)"), "{err}");
}
