//! The kernel table: the CUDA C sources of `kernels/`, embedded in the
//! binary, and their compilation with NVRTC.
//!
//! The sources are compiled once at start-up for the exact architecture of
//! the device (`sm_XY`, a CUBIN through `nvrtcGetCUBIN`): loading a CUBIN
//! takes ~0.1 ms where JIT-compiling PTX takes 50–170 ms, and only an `sm_`
//! target makes ptxas run, which is what catches broken inline PTX. NVRTC has
//! no `-Werror`, so the program log is read after every successful compile
//! and any warning fails it: a warning in a kernel is a bug shipped to every
//! GPU.
//!
//! The launch geometry of every kernel is here as well, as plain functions,
//! so that the tests which run the kernels on the CPU (`tests/kernels_cpu.rs`)
//! launch them exactly as the backend does.

use std::ffi::{c_char, c_int, CString};
use std::sync::OnceLock;

use cudarc::nvrtc::sys;

use super::error::CudaError;

/// One `.cu` file and the `extern "C"` kernels it defines.
#[derive(Debug)]
pub struct Source {
    /// Path relative to the repository, also NVRTC's program name, so that
    /// its diagnostics read `kernels/x.cu(12): error: …`.
    pub file: &'static str,
    pub text: &'static str,
    pub functions: &'static [&'static str],
}

/// Headers the sources `#include "…"`, handed to NVRTC by name (it has no
/// file system search for them).
pub const HEADERS: &[(&str, &str)] = &[("common.cuh", include_str!("../../../kernels/common.cuh"))];

macro_rules! source {
    ($file:literal, [$($f:literal),* $(,)?]) => {
        Source {
            file: concat!("kernels/", $file),
            text: include_str!(concat!("../../../kernels/", $file)),
            functions: &[$($f),*],
        }
    };
}

/// Every kernel source of `kernels/`. A test checks that this list and the
/// directory agree, so a new `.cu` file cannot be forgotten here.
pub const SOURCES: &[Source] = &[
    source!("layer_norm.cu", ["layer_norm_f32"]),
    source!("epilogue.cu", ["bias_act_f32"]),
    source!("embed.cu", ["embed_f16", "add_rows_f16"]),
    source!("softmax.cu", ["attn_softmax_f32"]),
    source!("conv.cu", ["im2col_k3_f16"]),
    source!("convert.cu", ["f32_to_f16_2d", "f16_to_f32_1d"]),
    source!("gather.cu", ["gather_rows_f32"]),
];

/// Threads per block of the row-wise kernels; `ROW_THREADS` in common.cuh.
pub const ROW_THREADS: u32 = 256;
/// Heads a [`HeadSlots`] can address; `MAX_HEADS` in softmax.cu.
pub const MAX_HEADS: usize = 64;
/// Threads per block of the element-wise (grid-stride) kernels.
const ELEMENTWISE_THREADS: u32 = 256;
/// Grid-stride kernels need no more blocks than this to fill any current GPU
/// (132 SMs × 16 resident blocks of 256 threads on an H100 is about 2000).
const MAX_ELEMENTWISE_BLOCKS: usize = 4096;

/// The kernels, by id: what the backend launches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    LayerNorm,
    BiasAct,
    Embed,
    AddRows,
    AttnSoftmax,
    Im2col,
    F32ToF16,
    F16ToF32,
    GatherRows,
}

impl Kernel {
    pub const ALL: [Kernel; 9] = [
        Kernel::LayerNorm,
        Kernel::BiasAct,
        Kernel::Embed,
        Kernel::AddRows,
        Kernel::AttnSoftmax,
        Kernel::Im2col,
        Kernel::F32ToF16,
        Kernel::F16ToF32,
        Kernel::GatherRows,
    ];

    /// The `extern "C"` name, as `cuModuleGetFunction` looks it up.
    pub fn function(self) -> &'static str {
        match self {
            Kernel::LayerNorm => "layer_norm_f32",
            Kernel::BiasAct => "bias_act_f32",
            Kernel::Embed => "embed_f16",
            Kernel::AddRows => "add_rows_f16",
            Kernel::AttnSoftmax => "attn_softmax_f32",
            Kernel::Im2col => "im2col_k3_f16",
            Kernel::F32ToF16 => "f32_to_f16_2d",
            Kernel::F16ToF32 => "f16_to_f32_1d",
            Kernel::GatherRows => "gather_rows_f32",
        }
    }

    /// Index into [`SOURCES`] of the file defining this kernel.
    pub fn source_index(self) -> usize {
        let name = self.function();
        // The table is static and checked by a unit test: every kernel is in it.
        SOURCES.iter().position(|s| s.functions.contains(&name)).unwrap_or(usize::MAX)
    }
}

/// Which heads' attention weights `attn_softmax_f32` copies out, and where:
/// passed to the kernel by value (`struct HeadSlots` in softmax.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadSlots {
    pub slot: [i32; MAX_HEADS],
}

// SAFETY: plain `#[repr(C)]` array of i32, laid out as the C struct.
unsafe impl cudarc::driver::DeviceRepr for HeadSlots {}

impl HeadSlots {
    /// No head copied out.
    pub fn none() -> Self {
        HeadSlots { slot: [-1; MAX_HEADS] }
    }

    /// Head `heads[k]` goes to slot `k`, as `Backend::attention` orders its
    /// `probs` rows. `None` when a head is ≥ [`MAX_HEADS`] or listed twice.
    pub fn for_heads(heads: &[usize]) -> Option<Self> {
        let mut s = Self::none();
        for (k, &h) in heads.iter().enumerate() {
            if h >= MAX_HEADS || s.slot[h] >= 0 {
                return None;
            }
            s.slot[h] = k as i32;
        }
        Some(s)
    }
}

/// Grid and block sizes (one-dimensional) of a launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launch {
    pub grid: u32,
    pub block: u32,
}

impl Launch {
    /// One block of [`ROW_THREADS`] per row (layer norm, softmax): their
    /// block reductions assume exactly that many threads.
    pub fn per_row(rows: usize) -> Launch {
        Launch { grid: rows.max(1) as u32, block: ROW_THREADS }
    }

    /// One block per row, threads across `width` columns (embedding, row
    /// gather): a warp multiple, at most [`ROW_THREADS`].
    pub fn per_row_across(rows: usize, width: usize) -> Launch {
        let block = width.div_ceil(32).clamp(1, (ROW_THREADS / 32) as usize) * 32;
        Launch { grid: rows.max(1) as u32, block: block as u32 }
    }

    /// Grid-stride loop over `n` elements.
    pub fn elementwise(n: usize) -> Launch {
        let blocks = n.div_ceil(ELEMENTWISE_THREADS as usize).clamp(1, MAX_ELEMENTWISE_BLOCKS);
        Launch { grid: blocks as u32, block: ELEMENTWISE_THREADS }
    }

    pub fn config(self) -> cudarc::driver::LaunchConfig {
        cudarc::driver::LaunchConfig { grid_dim: (self.grid, 1, 1), block_dim: (self.block, 1, 1), shared_mem_bytes: 0 }
    }
}

/// A compiled source: the CUBIN image and NVRTC's log (ptxas's resource
/// report when asked for).
#[derive(Debug)]
pub struct Cubin {
    pub file: &'static str,
    pub image: Vec<u8>,
    pub log: String,
}

/// Registers, spills and shared memory of one kernel, from ptxas's report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelResources {
    pub function: String,
    pub registers: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
    pub shared_bytes: u32,
}

/// Whether libnvrtc can be loaded. cudarc panics on the first NVRTC call
/// when it cannot, so every path here asks this first; each ask opens the
/// library anew, so the answer is kept.
pub fn nvrtc_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    // SAFETY: only tries to dlopen the library by its usual names.
    *PRESENT.get_or_init(|| unsafe { sys::is_culib_present() })
}

/// NVRTC's version, e.g. (13, 0).
pub fn nvrtc_version() -> Result<(i32, i32), CudaError> {
    if !nvrtc_present() {
        return Err(CudaError::NoNvrtc);
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present; both pointers are valid for writes.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }.result()?;
    Ok((major, minor))
}

/// The options every kernel is compiled with, for compute capability
/// `major.minor`.
pub fn options(major: i32, minor: i32, ptxas_verbose: bool) -> Vec<String> {
    let mut o = vec![
        format!("--gpu-architecture=sm_{major}{minor}"),
        "--std=c++17".to_string(),
        // Line tables: compute-sanitizer and profilers can name source lines.
        "--generate-line-info".to_string(),
    ];
    if ptxas_verbose {
        o.push("--ptxas-options=--verbose".to_string());
    }
    o
}

/// Destroys the program on every path out of [`compile`].
struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: created by nvrtcCreateProgram and destroyed only here.
        unsafe {
            let _ = sys::nvrtcDestroyProgram(&mut self.0);
        }
    }
}

fn cstring(s: &str) -> CString {
    // Sources, header names and options are ours and contain no NUL; a NUL
    // would only cut the string short, which NVRTC then reports.
    CString::new(s.replace('\0', "")).unwrap_or_default()
}

/// Compiles one source to a CUBIN for `sm_{major}{minor}`. A compile error
/// names the file and carries NVRTC's log; so does any warning.
pub fn compile(src: &Source, major: i32, minor: i32, ptxas_verbose: bool) -> Result<Cubin, CudaError> {
    if !nvrtc_present() {
        return Err(CudaError::NoNvrtc);
    }
    let text = cstring(src.text);
    let name = cstring(src.file);
    let header_texts: Vec<CString> = HEADERS.iter().map(|(_, t)| cstring(t)).collect();
    let header_names: Vec<CString> = HEADERS.iter().map(|(n, _)| cstring(n)).collect();
    let header_text_ptrs: Vec<*const c_char> = header_texts.iter().map(|c| c.as_ptr()).collect();
    let header_name_ptrs: Vec<*const c_char> = header_names.iter().map(|c| c.as_ptr()).collect();
    let opts: Vec<CString> = options(major, minor, ptxas_verbose).iter().map(|o| cstring(o)).collect();
    let opt_ptrs: Vec<*const c_char> = opts.iter().map(|c| c.as_ptr()).collect();

    let mut prog: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: every pointer refers to a live CString for the whole call; the
    // counts match the arrays.
    unsafe {
        sys::nvrtcCreateProgram(
            &mut prog,
            text.as_ptr(),
            name.as_ptr(),
            HEADERS.len() as c_int,
            header_text_ptrs.as_ptr(),
            header_name_ptrs.as_ptr(),
        )
    }
    .result()?;
    let prog = Program(prog);
    // SAFETY: as above; the program is live until `prog` drops.
    let status = unsafe { sys::nvrtcCompileProgram(prog.0, opt_ptrs.len() as c_int, opt_ptrs.as_ptr()) };
    let log = program_log(&prog)?;
    if status != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(CudaError::Compile { file: src.file, status: format!("{status:?}"), log });
    }
    if has_warning(&log) {
        return Err(CudaError::CompileWarning { file: src.file, log });
    }
    let mut size = 0usize;
    // SAFETY: the program compiled; `image` has exactly the reported size.
    let image = unsafe {
        sys::nvrtcGetCUBINSize(prog.0, &mut size).result()?;
        let mut image = vec![0u8; size];
        sys::nvrtcGetCUBIN(prog.0, image.as_mut_ptr().cast()).result()?;
        image
    };
    Ok(Cubin { file: src.file, image, log })
}

/// Compiles every source in [`SOURCES`]; the first failure stops it.
pub fn compile_all(major: i32, minor: i32) -> Result<Vec<Cubin>, CudaError> {
    SOURCES.iter().map(|s| compile(s, major, minor, false)).collect()
}

fn program_log(prog: &Program) -> Result<String, CudaError> {
    let mut size = 0usize;
    // SAFETY: live program; the buffer has the reported size (NUL included).
    unsafe {
        sys::nvrtcGetProgramLogSize(prog.0, &mut size).result()?;
        let mut buf = vec![0u8; size.max(1)];
        sys::nvrtcGetProgramLog(prog.0, buf.as_mut_ptr().cast()).result()?;
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        Ok(String::from_utf8_lossy(&buf[..end]).trim_end().to_string())
    }
}

/// A diagnostic of NVRTC's front end (`warning #…`) or of ptxas
/// (`ptxas warning : …`), not ptxas's informational resource lines.
pub fn has_warning(log: &str) -> bool {
    log.lines().any(|l| l.to_ascii_lowercase().contains("warning"))
}

/// Per-kernel registers, spills and shared memory from a log compiled with
/// `ptxas_verbose`.
pub fn ptxas_resources(log: &str) -> Vec<KernelResources> {
    let mut out: Vec<KernelResources> = Vec::new();
    let number_before = |line: &str, what: &str| -> Option<u32> {
        let at = line.find(what)?;
        line[..at].split(|c: char| !c.is_ascii_digit()).rfind(|s| !s.is_empty())?.parse().ok()
    };
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or("").to_string();
            out.push(KernelResources { function: name, ..Default::default() });
            continue;
        }
        let Some(cur) = out.last_mut() else { continue };
        if line.contains("spill stores") {
            cur.spill_stores = number_before(line, "bytes spill stores").unwrap_or(0);
            cur.spill_loads = number_before(line, "bytes spill loads").unwrap_or(0);
        }
        if line.contains("Used ") && line.contains("registers") {
            cur.registers = number_before(line, " registers").unwrap_or(0);
            cur.shared_bytes = number_before(line, " bytes smem").unwrap_or(0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_has_a_source_and_every_source_is_listed() {
        for k in Kernel::ALL {
            assert!(k.source_index() < SOURCES.len(), "{k:?} is in no source");
        }
        let listed: usize = SOURCES.iter().map(|s| s.functions.len()).sum();
        assert_eq!(listed, Kernel::ALL.len(), "SOURCES names a function with no Kernel id");
        for s in SOURCES {
            for f in s.functions {
                assert!(s.text.contains(&format!("{f}(")), "{}: defines no {f}", s.file);
            }
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .expect("kernels/ is part of the repository")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".cu"))
            .map(|n| format!("kernels/{n}"))
            .collect();
        on_disk.sort();
        let mut listed: Vec<String> = SOURCES.iter().map(|s| s.file.to_string()).collect();
        listed.sort();
        assert_eq!(on_disk, listed, "kernels/*.cu and kernels::SOURCES differ");
    }

    #[test]
    fn constants_agree_with_the_c_sources() {
        let common = HEADERS[0].1;
        assert!(common.contains(&format!("#define ROW_THREADS {ROW_THREADS}")));
        let softmax = SOURCES.iter().find(|s| s.file.ends_with("softmax.cu")).map(|s| s.text).unwrap_or("");
        assert!(softmax.contains(&format!("#define MAX_HEADS {MAX_HEADS}")));
        assert_eq!(std::mem::size_of::<HeadSlots>(), 4 * MAX_HEADS);
    }

    #[test]
    fn head_slots() {
        let s = HeadSlots::for_heads(&[3, 1]).expect("valid heads");
        assert_eq!((s.slot[3], s.slot[1], s.slot[0]), (0, 1, -1));
        assert!(HeadSlots::for_heads(&[2, 2]).is_none());
        assert!(HeadSlots::for_heads(&[MAX_HEADS]).is_none());
        assert!(HeadSlots::none().slot.iter().all(|&x| x == -1));
    }

    #[test]
    fn launch_geometry() {
        assert_eq!(Launch::per_row(10), Launch { grid: 10, block: ROW_THREADS });
        assert_eq!(Launch::per_row_across(4, 1), Launch { grid: 4, block: 32 });
        assert_eq!(Launch::per_row_across(4, 100), Launch { grid: 4, block: 128 });
        assert_eq!(Launch::per_row_across(4, 5000), Launch { grid: 4, block: ROW_THREADS });
        assert_eq!(Launch::elementwise(0).grid, 1);
        assert_eq!(Launch::elementwise(257).grid, 2);
        assert_eq!(Launch::elementwise(usize::MAX / 2).grid, MAX_ELEMENTWISE_BLOCKS as u32);
    }

    #[test]
    fn warnings_and_resources_are_read_from_the_log() {
        let log = "ptxas info    : 0 bytes gmem\n\
            ptxas info    : Compiling entry function 'layer_norm_f32' for 'sm_90'\n\
            ptxas info    : Function properties for layer_norm_f32\n\
            \x20   8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
            ptxas info    : Used 18 registers, used 1 barriers, 128 bytes smem, 400 bytes cmem[0]";
        assert!(!has_warning(log));
        assert!(has_warning("kernels/x.cu(3): warning #177-D: variable \"y\" was declared but never referenced"));
        let r = ptxas_resources(log);
        assert_eq!(
            r,
            vec![KernelResources {
                function: "layer_norm_f32".into(),
                registers: 18,
                spill_stores: 4,
                spill_loads: 12,
                shared_bytes: 128
            }]
        );
    }

    #[test]
    fn options_target_the_exact_architecture() {
        let o = options(9, 0, true);
        assert!(o.contains(&"--gpu-architecture=sm_90".to_string()));
        assert!(o.iter().any(|x| x.contains("ptxas-options")));
    }
}
