// fake_cuda.cpp — a CUDA device that is not there: the driver API, NVRTC and
// cuBLAS functions scribed calls, on the CPU, strict about how they are used.
//
// Why: CI has no GPU, and the CUDA backend must run on every commit, not only
// in the rare session that is lent one. cudarc opens libcuda.so, libnvrtc.so,
// libcublas.so and libcublasLt.so by name and resolves each function on first
// call, so this one library (SONAME libcuda.so; the other three names are
// empty libraries that depend on it, see build.sh) stands in for all of them.
//
// The model:
// - device memory is host memory: each cuMemAlloc is its own mapping with an
//   inaccessible page after it, in a registry of live allocations; virtual
//   memory management (cuMemAddressReserve, cuMemCreate, cuMemMap,
//   cuMemSetAccess, cuMemUnmap, cuMemRelease) is address space reserved
//   inaccessible, a memfd per physical allocation mapped into it, and a
//   mapping becomes a live allocation only once access is granted;
// - "NVRTC" compiles the unchanged kernel source with g++ and the fiber shim
//   (kernels/shim/cuda_shim.h) into a shared library, cached by the hash of
//   everything that goes into it; the "CUBIN" names that library, and
//   cuModuleLoadData dlopens it;
// - cuLaunchKernel and the cuBLAS GEMMs (column-major reference loops) run on
//   the thread that synchronises, deferred to the stream's synchronisation
//   point (the latest CUDA allows), or at once with
//   SCRIBED_FAKE_CUDA_MODE=enqueue. Host-to-device copies from pageable memory
//   take their data at the call, as CUDA stages them.
//
// What it checks, each a "violation" that makes the call fail and is listed
// in the report (SCRIBED_FAKE_CUDA_REPORT=FILE, JSON, written at exit; also
// `fake_cuda_report()`): every copy, memset, GEMM operand and kernel pointer
// argument inside one live allocation; a current context on every call that
// needs one; a stream used by one host thread at a time; launch limits;
// cuBLAS's leading-dimension rules; batched GEMMs whose outputs overlap.
// Anything it does not model (an attribute, an option, a data type) fails
// loudly with "not modelled". The report also counts allocations and frees,
// which is how tests check that the arena is the only allocation.
//
// Fault injection: SCRIBED_FAKE_CUDA_STICKY_AFTER=N makes the Nth kernel
// launch lose the context, as an illegal address in a kernel does: every
// later call that needs the context returns CUDA_ERROR_ILLEGAL_ADDRESS.
// SCRIBED_FAKE_CUDA_FAIL_AT=N refuses the Nth launch alone
// (CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES), which loses nothing else.
//
// Environment: SCRIBED_FAKE_CUDA_MODE (deferred|enqueue),
// SCRIBED_FAKE_CUDA_MEM (device bytes, default 16 GiB), SCRIBED_FAKE_CUDA_REPORT,
// SCRIBED_FAKE_CUDA_NO_VMM (a device without virtual memory management),
// SCRIBED_FAKE_CUDA_CACHE (where compiled kernel modules are kept).
#include <dlfcn.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <deque>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "fake_module.h"

#ifndef FAKE_CUDA_KERNELS_DIR
#error "build with -DFAKE_CUDA_KERNELS_DIR=<repo>/kernels (see build.sh)"
#endif
#ifndef FAKE_CUDA_SRC_DIR
#error "build with -DFAKE_CUDA_SRC_DIR=<repo>/tests/fake_cuda (see build.sh)"
#endif

// ------------------------------------------------------------------ types --

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
struct Ctx;
struct Stream;
struct Module;
struct Func;
struct Blas;
struct Program;
typedef Ctx* CUcontext;
typedef Stream* CUstream;
typedef Module* CUmodule;
typedef Func* CUfunction;

enum : CUresult {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_NO_DEVICE = 100,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_IMAGE = 200,
    CUDA_ERROR_INVALID_CONTEXT = 201,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_ILLEGAL_STATE = 401,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_ILLEGAL_ADDRESS = 700,
    CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES = 701,
    CUDA_ERROR_NOT_SUPPORTED = 801,
};

// Virtual memory management's structs, as CUDA 13.0's cuda.h lays them out.
enum { CU_MEM_ALLOCATION_TYPE_PINNED = 1, CU_MEM_LOCATION_TYPE_DEVICE = 1, CU_MEM_ACCESS_FLAGS_PROT_READWRITE = 3 };
struct CUmemLocation {
    int type;
    int id;
};
struct CUmemAllocationProp {
    int type;
    int requestedHandleTypes;
    CUmemLocation location;
    void* win32HandleMetaData;
    unsigned char compressionType, gpuDirectRDMACapable;
    unsigned short usage;
    unsigned char reserved[4];
};
struct CUmemAccessDesc {
    CUmemLocation location;
    int flags;
};

enum { NVRTC_SUCCESS = 0, NVRTC_ERROR_INVALID_INPUT = 3, NVRTC_ERROR_INVALID_PROGRAM = 4,
       NVRTC_ERROR_INVALID_OPTION = 5, NVRTC_ERROR_COMPILATION = 6 };
enum { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_NOT_INITIALIZED = 1, CUBLAS_STATUS_INVALID_VALUE = 7,
       CUBLAS_STATUS_EXECUTION_FAILED = 13, CUBLAS_STATUS_NOT_SUPPORTED = 15 };
enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum { CUDA_R_32F = 0, CUDA_R_16F = 2 };
enum { CUBLAS_COMPUTE_32F = 68 };

namespace {

// ------------------------------------------------------------ the device --

struct Config {
    bool deferred = true;
    size_t total = size_t(16) << 30;
    std::string report;
    std::string cache;
    uint64_t sticky_after = 0;  // 0: never
    uint64_t fail_at = 0;       // 0: never
    bool vmm = true;            // virtual memory management supported

    Config() {
        if (const char* m = std::getenv("SCRIBED_FAKE_CUDA_MODE")) {
            if (!std::strcmp(m, "enqueue")) deferred = false;
            else if (std::strcmp(m, "deferred")) fatal("SCRIBED_FAKE_CUDA_MODE must be deferred or enqueue");
        }
        if (const char* m = std::getenv("SCRIBED_FAKE_CUDA_MEM")) total = std::strtoull(m, nullptr, 10);
        if (const char* r = std::getenv("SCRIBED_FAKE_CUDA_REPORT")) report = r;
        if (const char* n = std::getenv("SCRIBED_FAKE_CUDA_STICKY_AFTER")) sticky_after = std::strtoull(n, nullptr, 10);
        if (const char* n = std::getenv("SCRIBED_FAKE_CUDA_FAIL_AT")) fail_at = std::strtoull(n, nullptr, 10);
        vmm = std::getenv("SCRIBED_FAKE_CUDA_NO_VMM") == nullptr;
        const char* c = std::getenv("SCRIBED_FAKE_CUDA_CACHE");
        cache = c ? c : "/tmp/scribed-fake-cuda-" + std::to_string(getuid());
    }

    [[noreturn]] static void fatal(const char* what) {
        std::fprintf(stderr, "fake-cuda: %s\n", what);
        std::abort();
    }
};

struct Alloc {
    size_t bytes;
    void* map;
    size_t map_bytes;
    bool vmm;  // a cuMemMap'ed range: unmapped with cuMemUnmap, not cuMemFree
};

// Virtual memory management: reserved ranges, physical allocations (a memfd
// each) and the mappings of the one into the other.
struct Phys {
    int fd;
    size_t bytes;
    int maps = 0;
    bool released = false;
};

struct Mapping {
    size_t bytes;
    uint64_t handle;
};

struct Counters {
    uint64_t allocs = 0, frees = 0, launches = 0, launch_calls = 0, gemms = 0, copies = 0, memsets = 0, syncs = 0;
    uint64_t streams_created = 0, streams_destroyed = 0, modules = 0, blas_handles = 0;
    uint64_t violations = 0;
    std::vector<uint64_t> alloc_sizes;
};

struct Device {
    Config cfg;
    std::mutex m;
    std::map<uint64_t, Alloc> allocs;  // by device address
    std::map<uint64_t, size_t> reservations;  // start → bytes
    std::map<uint64_t, Phys> phys;            // by handle
    std::map<uint64_t, Mapping> mappings;     // by start address
    uint64_t next_handle = 1;
    size_t used = 0;
    Counters n;
    std::vector<std::string> violations;  // the first 100
    std::set<Stream*> streams;
    bool initialized = false;
};

Device& dev() {
    static Device* d = new Device;  // never destroyed: streams may sync during exit
    return *d;
}

const size_t PAGE = 4096;
// Reserved for the context, modules and handles, as a real device's free
// memory is less than its total.
const size_t RESERVED = size_t(256) << 20;

void vrecord(const char* fmt, va_list ap) {
    char buf[1024];
    std::vsnprintf(buf, sizeof buf, fmt, ap);
    std::fprintf(stderr, "fake-cuda: VIOLATION: %s\n", buf);
    Device& d = dev();
    std::lock_guard<std::mutex> g(d.m);
    d.n.violations++;
    if (d.violations.size() < 100) d.violations.emplace_back(buf);
}

// Records a violation; returns `code` so callers can `return violation(...)`.
int violation(int code, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
int violation(int code, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vrecord(fmt, ap);
    va_end(ap);
    return code;
}

[[noreturn]] void not_modelled(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void not_modelled(const char* fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    std::fprintf(stderr, "fake-cuda: not modelled: %s\n", buf);
    std::abort();
}

// Whether [p, p + bytes) lies inside one live allocation.
bool inside(uint64_t p, size_t bytes) {
    Device& d = dev();
    std::lock_guard<std::mutex> g(d.m);
    auto it = d.allocs.upper_bound(p);
    if (it == d.allocs.begin()) return false;
    --it;
    return p >= it->first && bytes <= it->second.bytes && p - it->first <= it->second.bytes - bytes;
}

int check_range(uint64_t p, size_t bytes, const char* what) {
    if (bytes == 0 || inside(p, bytes)) return CUDA_SUCCESS;
    return violation(CUDA_ERROR_ILLEGAL_ADDRESS, "%s: [0x%llx, +%zu) is not inside one live allocation", what,
                     (unsigned long long)p, bytes);
}

}  // namespace

// --------------------------------------------------------------- contexts --

struct Ctx {
    int refs = 0;
};

namespace {

Ctx primary;
thread_local Ctx* current = nullptr;
// The error a lost context returns from every call (fault injection).
std::atomic<int> sticky{0};

int need_context(const char* call) {
    if (int e = sticky.load()) return e;
    if (current == &primary && primary.refs > 0) return CUDA_SUCCESS;
    return violation(CUDA_ERROR_INVALID_CONTEXT, "%s without a current context on this thread", call);
}

// ---------------------------------------------------------------- streams --

using Job = std::function<void()>;

}  // namespace

struct Stream {
    std::mutex m;
    std::deque<Job> queue;
    std::atomic<int> users{0};
};

namespace {

// Marks a stream as used by the calling thread for one call; two host
// threads inside calls on one stream at once is a violation.
struct Use {
    Stream* s;
    bool ok;
    explicit Use(Stream* s_, const char* call) : s(s_) {
        ok = s->users.fetch_add(1) == 0;
        if (!ok) violation(CUDA_ERROR_ILLEGAL_STATE, "%s: stream %p used by two host threads at once", call, (void*)s);
    }
    ~Use() { s->users.fetch_sub(1); }
};

bool live_stream(Stream* s) {
    Device& d = dev();
    std::lock_guard<std::mutex> g(d.m);
    return d.streams.count(s) != 0;
}

int check_stream(Stream* s, const char* call) {
    if (s == nullptr) return violation(CUDA_ERROR_INVALID_HANDLE, "%s on the default stream (scribed uses its own)", call);
    if (!live_stream(s)) return violation(CUDA_ERROR_INVALID_HANDLE, "%s on a stream that does not exist", call);
    return CUDA_SUCCESS;
}

void drain(Stream* s) {
    std::deque<Job> q;
    {
        std::lock_guard<std::mutex> g(s->m);
        q.swap(s->queue);
    }
    for (auto& j : q) j();
}

void enqueue(Stream* s, Job j) {
    if (dev().cfg.deferred) {
        std::lock_guard<std::mutex> g(s->m);
        s->queue.push_back(std::move(j));
    } else {
        j();
    }
}

void drain_all() {
    std::vector<Stream*> all;
    {
        Device& d = dev();
        std::lock_guard<std::mutex> g(d.m);
        all.assign(d.streams.begin(), d.streams.end());
    }
    for (Stream* s : all) drain(s);
}

std::string json_escape(const std::string& s) {
    std::string o;
    for (char c : s) {
        if (c == '"' || c == '\\') o += '\\', o += c;
        else if ((unsigned char)c < 0x20) o += ' ';
        else o += c;
    }
    return o;
}

std::string report_json() {
    Device& d = dev();
    std::lock_guard<std::mutex> g(d.m);
    std::ostringstream o;
    const Counters& n = d.n;
    o << "{\"mode\":\"" << (d.cfg.deferred ? "deferred" : "enqueue") << "\",\"allocs\":" << n.allocs
      << ",\"frees\":" << n.frees << ",\"live_allocs\":" << d.allocs.size() << ",\"alloc_sizes\":[";
    for (size_t i = 0; i < n.alloc_sizes.size() && i < 100; ++i) o << (i ? "," : "") << n.alloc_sizes[i];
    o << "],\"launches\":" << n.launches << ",\"gemms\":" << n.gemms << ",\"copies\":" << n.copies
      << ",\"memsets\":" << n.memsets << ",\"syncs\":" << n.syncs << ",\"streams_created\":" << n.streams_created
      << ",\"streams_destroyed\":" << n.streams_destroyed << ",\"modules\":" << n.modules
      << ",\"blas_handles\":" << n.blas_handles << ",\"violations\":" << n.violations << ",\"violation_list\":[";
    for (size_t i = 0; i < d.violations.size(); ++i) o << (i ? "," : "") << '"' << json_escape(d.violations[i]) << '"';
    o << "]}";
    return o.str();
}

struct WriteReportAtExit {
    ~WriteReportAtExit() {
        const std::string& path = dev().cfg.report;
        if (path.empty()) return;
        std::ofstream f(path);
        f << report_json() << "\n";
    }
} write_report_at_exit;

}  // namespace

// ============================================================ driver API ==

extern "C" {

const char* fake_cuda_report() {
    static thread_local std::string s;
    s = report_json();
    return s.c_str();
}

CUresult cuInit(unsigned flags) {
    if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
    Device& d = dev();
    std::lock_guard<std::mutex> g(d.m);
    d.initialized = true;
    return CUDA_SUCCESS;
}

static CUresult need_init() {
    Device& d = dev();
    std::lock_guard<std::mutex> g(d.m);
    return d.initialized ? CUDA_SUCCESS : CUDA_ERROR_NOT_INITIALIZED;
}

CUresult cuDriverGetVersion(int* v) {
    *v = 13000;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetCount(int* n) {
    if (CUresult r = need_init()) return r;
    *n = 1;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    if (CUresult r = need_init()) return r;
    if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
    *d = 0;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetName(char* name, int len, CUdevice d) {
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    std::snprintf(name, (size_t)len, "%s", "scribed fake CUDA device");
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetAttribute(int* v, int attr, CUdevice d) {
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    switch (attr) {
        case 1: *v = 1024; break;    // MAX_THREADS_PER_BLOCK
        case 8: *v = 49152; break;   // MAX_SHARED_MEMORY_PER_BLOCK
        case 10: *v = 32; break;     // WARP_SIZE
        case 16: *v = 132; break;    // MULTIPROCESSOR_COUNT
        case 75: *v = 9; break;      // COMPUTE_CAPABILITY_MAJOR
        case 76: *v = 0; break;      // COMPUTE_CAPABILITY_MINOR
        case 102: *v = dev().cfg.vmm; break;  // VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED
        case 115: *v = 0; break;     // MEMORY_POOLS_SUPPORTED: no async allocator
        default: not_modelled("cuDeviceGetAttribute(%d)", attr);
    }
    return CUDA_SUCCESS;
}

CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice d) {
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    *bytes = dev().cfg.total;
    return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxRetain(CUcontext* c, CUdevice d) {
    if (CUresult r = need_init()) return r;
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    std::lock_guard<std::mutex> g(dev().m);
    primary.refs++;
    *c = &primary;
    return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d) {
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    std::lock_guard<std::mutex> g(dev().m);
    if (primary.refs <= 0) return violation(CUDA_ERROR_INVALID_CONTEXT, "primary context released more than retained");
    primary.refs--;
    return CUDA_SUCCESS;
}

CUresult cuCtxSetCurrent(CUcontext c) {
    if (c != nullptr && c != &primary) return CUDA_ERROR_INVALID_CONTEXT;
    current = c;
    return CUDA_SUCCESS;
}

CUresult cuCtxGetCurrent(CUcontext* c) {
    *c = current;
    return CUDA_SUCCESS;
}

CUresult cuCtxSynchronize() {
    if (CUresult r = need_context("cuCtxSynchronize")) return r;
    drain_all();
    std::lock_guard<std::mutex> g(dev().m);
    dev().n.syncs++;
    return CUDA_SUCCESS;
}

CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    if (CUresult r = need_context("cuMemGetInfo")) return r;
    Device& d = dev();
    std::lock_guard<std::mutex> g(d.m);
    *total = d.cfg.total;
    *free_bytes = d.cfg.total > RESERVED + d.used ? d.cfg.total - RESERVED - d.used : 0;
    return CUDA_SUCCESS;
}

CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    if (CUresult r = need_context("cuMemAlloc")) return r;
    if (bytes == 0) return CUDA_ERROR_INVALID_VALUE;
    Device& d = dev();
    {
        std::lock_guard<std::mutex> g(d.m);
        if (RESERVED + d.used + bytes > d.cfg.total) return CUDA_ERROR_OUT_OF_MEMORY;
    }
    // The allocation ends (256-aligned) just before an inaccessible page, so
    // a kernel or copy running past it faults.
    const size_t body = (bytes + 255) / 256 * 256, pages = (body + PAGE - 1) / PAGE * PAGE;
    void* map = mmap(nullptr, pages + PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (map == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
    mprotect(static_cast<char*>(map) + pages, PAGE, PROT_NONE);
    const uint64_t addr = reinterpret_cast<uint64_t>(map) + (pages - body);
    std::lock_guard<std::mutex> g(d.m);
    d.allocs[addr] = Alloc{bytes, map, pages + PAGE, false};
    d.used += bytes;
    d.n.allocs++;
    d.n.alloc_sizes.push_back(bytes);
    *p = addr;
    return CUDA_SUCCESS;
}

CUresult cuMemFree_v2(CUdeviceptr p) {
    if (CUresult r = need_context("cuMemFree")) return r;
    drain_all();  // cuMemFree waits for work that may use the memory
    Device& d = dev();
    std::lock_guard<std::mutex> g(d.m);
    auto it = d.allocs.find(p);
    if (it == d.allocs.end() || it->second.vmm)
        return violation(CUDA_ERROR_INVALID_VALUE, "cuMemFree(0x%llx): not the start of a live allocation",
                         (unsigned long long)p);
    munmap(it->second.map, it->second.map_bytes);
    d.used -= it->second.bytes;
    d.allocs.erase(it);
    d.n.frees++;
    return CUDA_SUCCESS;
}

// ------------------------------------------------ virtual memory management --

// The allocation granularity this device reports (a real GPU's is 2 MiB).
const size_t GRANULARITY = size_t(2) << 20;

static CUresult check_prop(const CUmemAllocationProp* prop, const char* call) {
    if (prop == nullptr) return CUDA_ERROR_INVALID_VALUE;
    if (prop->type != CU_MEM_ALLOCATION_TYPE_PINNED || prop->requestedHandleTypes != 0 ||
        prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE)
        not_modelled("%s with other than pinned device memory and no shareable handle", call);
    if (prop->location.id != 0) return CUDA_ERROR_INVALID_DEVICE;
    return CUDA_SUCCESS;
}

CUresult cuMemGetAllocationGranularity(size_t* g, const CUmemAllocationProp* prop, int option) {
    if (CUresult r = check_prop(prop, "cuMemGetAllocationGranularity")) return r;
    (void)option;  // minimum and recommended are the same here
    *g = GRANULARITY;
    return CUDA_SUCCESS;
}

CUresult cuMemAddressReserve(CUdeviceptr* p, size_t bytes, size_t alignment, CUdeviceptr addr,
                             unsigned long long flags) {
    if (CUresult r = need_context("cuMemAddressReserve")) return r;
    if (!dev().cfg.vmm) return CUDA_ERROR_NOT_SUPPORTED;
    if (addr != 0 || flags != 0) not_modelled("cuMemAddressReserve at a requested address or with flags");
    if (bytes == 0 || bytes % GRANULARITY != 0)
        return violation(CUDA_ERROR_INVALID_VALUE, "cuMemAddressReserve(%zu): not a multiple of the granularity", bytes);
    const size_t align = std::max(alignment, GRANULARITY);
    if (align % GRANULARITY != 0 || (align & (align - 1)) != 0) return CUDA_ERROR_INVALID_VALUE;
    // Inaccessible until mapped; one more inaccessible page after the range.
    const size_t span = bytes + align + PAGE;
    void* map = mmap(nullptr, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (map == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
    const uint64_t raw = reinterpret_cast<uint64_t>(map), start = (raw + align - 1) / align * align;
    if (start > raw) munmap(map, start - raw);
    const uint64_t end = start + bytes + PAGE;
    if (raw + span > end) munmap(reinterpret_cast<void*>(end), raw + span - end);
    std::lock_guard<std::mutex> g(dev().m);
    dev().reservations[start] = bytes;
    *p = start;
    return CUDA_SUCCESS;
}

CUresult cuMemAddressFree(CUdeviceptr p, size_t bytes) {
    if (CUresult r = need_context("cuMemAddressFree")) return r;
    Device& d = dev();
    std::lock_guard<std::mutex> g(d.m);
    auto it = d.reservations.find(p);
    if (it == d.reservations.end() || it->second != bytes)
        return violation(CUDA_ERROR_INVALID_VALUE, "cuMemAddressFree(0x%llx, %zu): not a reserved range",
                         (unsigned long long)p, bytes);
    auto m = d.mappings.lower_bound(p);
    if (m != d.mappings.end() && m->first < p + bytes)
        return violation(CUDA_ERROR_INVALID_VALUE, "cuMemAddressFree(0x%llx): the range is still mapped",
                         (unsigned long long)p);
    munmap(reinterpret_cast<void*>(p), bytes + PAGE);
    d.reservations.erase(it);
    return CUDA_SUCCESS;
}

CUresult cuMemCreate(uint64_t* handle, size_t bytes, const CUmemAllocationProp* prop, unsigned long long flags) {
    if (CUresult r = need_context("cuMemCreate")) return r;
    if (!dev().cfg.vmm) return CUDA_ERROR_NOT_SUPPORTED;
    if (CUresult r = check_prop(prop, "cuMemCreate")) return r;
    if (flags != 0) not_modelled("cuMemCreate flags");
    if (bytes == 0 || bytes % GRANULARITY != 0)
        return violation(CUDA_ERROR_INVALID_VALUE, "cuMemCreate(%zu): not a multiple of the granularity", bytes);
    Device& d = dev();
    {
        std::lock_guard<std::mutex> g(d.m);
        if (RESERVED + d.used + bytes > d.cfg.total) return CUDA_ERROR_OUT_OF_MEMORY;
    }
    const int fd = memfd_create("scribed-fake-cuda", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)bytes) != 0) {
        if (fd >= 0) close(fd);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    std::lock_guard<std::mutex> g(d.m);
    const uint64_t h = d.next_handle++;
    d.phys[h] = Phys{fd, bytes};
    d.used += bytes;
    d.n.allocs++;
    d.n.alloc_sizes.push_back(bytes);
    *handle = h;
    return CUDA_SUCCESS;
}

// Frees physical memory once it is released and no longer mapped, as CUDA
// does. Called with the device lock held.
static void free_phys_if_done(Device& d, uint64_t handle) {
    auto it = d.phys.find(handle);
    if (it == d.phys.end() || !it->second.released || it->second.maps > 0) return;
    close(it->second.fd);
    d.used -= it->second.bytes;
    d.n.frees++;
    d.phys.erase(it);
}

CUresult cuMemRelease(uint64_t handle) {
    if (CUresult r = need_context("cuMemRelease")) return r;
    Device& d = dev();
    std::lock_guard<std::mutex> g(d.m);
    auto it = d.phys.find(handle);
    if (it == d.phys.end() || it->second.released)
        return violation(CUDA_ERROR_INVALID_VALUE, "cuMemRelease(%llu): not a live allocation handle",
                         (unsigned long long)handle);
    it->second.released = true;
    free_phys_if_done(d, handle);
    return CUDA_SUCCESS;
}

CUresult cuMemMap(CUdeviceptr p, size_t bytes, size_t offset, uint64_t handle, unsigned long long flags) {
    if (CUresult r = need_context("cuMemMap")) return r;
    if (flags != 0) not_modelled("cuMemMap flags");
    Device& d = dev();
    std::lock_guard<std::mutex> g(d.m);
    auto r = d.reservations.upper_bound(p);
    const bool reserved = r != d.reservations.begin() && (--r, p >= r->first && p + bytes <= r->first + r->second);
    if (!reserved || bytes == 0 || p % GRANULARITY != 0 || bytes % GRANULARITY != 0)
        return violation(CUDA_ERROR_INVALID_VALUE, "cuMemMap(0x%llx, %zu): not a granular part of a reserved range",
                         (unsigned long long)p, bytes);
    auto m = d.mappings.lower_bound(p);
    const bool overlaps = (m != d.mappings.end() && m->first < p + bytes) ||
                          (m != d.mappings.begin() && (--m, m->first + m->second.bytes > p));
    if (overlaps)
        return violation(CUDA_ERROR_INVALID_VALUE, "cuMemMap(0x%llx): the range is already mapped",
                         (unsigned long long)p);
    auto ph = d.phys.find(handle);
    if (ph == d.phys.end() || ph->second.released || offset + bytes > ph->second.bytes)
        return violation(CUDA_ERROR_INVALID_VALUE, "cuMemMap: handle %llu cannot back %zu bytes at offset %zu",
                         (unsigned long long)handle, bytes, offset);
    void* at = mmap(reinterpret_cast<void*>(p), bytes, PROT_NONE, MAP_SHARED | MAP_FIXED, ph->second.fd, (off_t)offset);
    if (at == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
    ph->second.maps++;
    d.mappings[p] = Mapping{bytes, handle};
    return CUDA_SUCCESS;
}

CUresult cuMemSetAccess(CUdeviceptr p, size_t bytes, const CUmemAccessDesc* desc, size_t count) {
    if (CUresult r = need_context("cuMemSetAccess")) return r;
    if (count != 1 || desc == nullptr || desc->location.type != CU_MEM_LOCATION_TYPE_DEVICE ||
        desc->flags != CU_MEM_ACCESS_FLAGS_PROT_READWRITE)
        not_modelled("cuMemSetAccess other than read-write for the one device");
    if (desc->location.id != 0) return CUDA_ERROR_INVALID_DEVICE;
    Device& d = dev();
    std::lock_guard<std::mutex> g(d.m);
    auto m = d.mappings.find(p);
    if (m == d.mappings.end() || m->second.bytes != bytes)
        not_modelled("cuMemSetAccess on other than exactly one mapping");
    mprotect(reinterpret_cast<void*>(p), bytes, PROT_READ | PROT_WRITE);
    d.allocs[p] = Alloc{bytes, nullptr, 0, true};
    return CUDA_SUCCESS;
}

// Whether any stream has work queued (deferred mode), with the lock held.
static bool work_queued(Device& d) {
    for (Stream* s : d.streams) {
        std::lock_guard<std::mutex> g(s->m);
        if (!s->queue.empty()) return true;
    }
    return false;
}

CUresult cuMemUnmap(CUdeviceptr p, size_t bytes) {
    if (CUresult r = need_context("cuMemUnmap")) return r;
    Device& d = dev();
    std::lock_guard<std::mutex> g(d.m);
    auto m = d.mappings.find(p);
    if (m == d.mappings.end() || m->second.bytes != bytes)
        return violation(CUDA_ERROR_INVALID_VALUE, "cuMemUnmap(0x%llx, %zu): not exactly one mapped range",
                         (unsigned long long)p, bytes);
    // Unmapping does not wait for the device: work still queued that may
    // use the range is the caller's mistake (synchronise first).
    if (work_queued(d))
        return violation(CUDA_ERROR_ILLEGAL_STATE, "cuMemUnmap(0x%llx) while work is queued on a stream",
                         (unsigned long long)p);
    mmap(reinterpret_cast<void*>(p), bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
    const uint64_t handle = m->second.handle;
    d.mappings.erase(m);
    d.allocs.erase(p);
    d.phys[handle].maps--;
    free_phys_if_done(d, handle);
    return CUDA_SUCCESS;
}

CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t bytes, CUstream s) {
    if (CUresult r = need_context("cuMemcpyHtoDAsync")) return r;
    if (CUresult r = check_stream(s, "cuMemcpyHtoDAsync")) return r;
    Use use(s, "cuMemcpyHtoDAsync");
    if (!use.ok) return CUDA_ERROR_ILLEGAL_STATE;
    if (CUresult r = check_range(dst, bytes, "cuMemcpyHtoDAsync destination")) return r;
    // Pageable host memory is staged before the call returns.
    auto staged = std::make_shared<std::vector<unsigned char>>(static_cast<const unsigned char*>(src),
                                                               static_cast<const unsigned char*>(src) + bytes);
    enqueue(s, [dst, staged] { std::memcpy(reinterpret_cast<void*>(dst), staged->data(), staged->size()); });
    std::lock_guard<std::mutex> g(dev().m);
    dev().n.copies++;
    return CUDA_SUCCESS;
}

CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t bytes, CUstream s) {
    if (CUresult r = need_context("cuMemcpyDtoHAsync")) return r;
    if (CUresult r = check_stream(s, "cuMemcpyDtoHAsync")) return r;
    Use use(s, "cuMemcpyDtoHAsync");
    if (!use.ok) return CUDA_ERROR_ILLEGAL_STATE;
    if (CUresult r = check_range(src, bytes, "cuMemcpyDtoHAsync source")) return r;
    enqueue(s, [dst, src, bytes] { std::memcpy(dst, reinterpret_cast<const void*>(src), bytes); });
    std::lock_guard<std::mutex> g(dev().m);
    dev().n.copies++;
    return CUDA_SUCCESS;
}

CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, CUstream s) {
    if (CUresult r = need_context("cuMemsetD8Async")) return r;
    if (CUresult r = check_stream(s, "cuMemsetD8Async")) return r;
    Use use(s, "cuMemsetD8Async");
    if (!use.ok) return CUDA_ERROR_ILLEGAL_STATE;
    if (CUresult r = check_range(dst, n, "cuMemsetD8Async")) return r;
    enqueue(s, [dst, v, n] { std::memset(reinterpret_cast<void*>(dst), v, n); });
    std::lock_guard<std::mutex> g(dev().m);
    dev().n.memsets++;
    return CUDA_SUCCESS;
}

CUresult cuStreamCreate(CUstream* out, unsigned flags) {
    if (CUresult r = need_context("cuStreamCreate")) return r;
    if (flags > 1) not_modelled("cuStreamCreate flags %u", flags);
    Stream* s = new Stream;
    Device& d = dev();
    std::lock_guard<std::mutex> g(d.m);
    d.streams.insert(s);
    d.n.streams_created++;
    *out = s;
    return CUDA_SUCCESS;
}

CUresult cuStreamSynchronize(CUstream s) {
    if (int e = sticky.load()) return e;
    if (CUresult r = check_stream(s, "cuStreamSynchronize")) return r;
    {
        Use use(s, "cuStreamSynchronize");
        if (!use.ok) return CUDA_ERROR_ILLEGAL_STATE;
        drain(s);
    }
    std::lock_guard<std::mutex> g(dev().m);
    dev().n.syncs++;
    return CUDA_SUCCESS;
}

CUresult cuStreamDestroy_v2(CUstream s) {
    if (CUresult r = check_stream(s, "cuStreamDestroy")) return r;
    drain(s);  // pending work completes first
    Device& d = dev();
    std::lock_guard<std::mutex> g(d.m);
    d.streams.erase(s);
    d.n.streams_destroyed++;
    delete s;
    return CUDA_SUCCESS;
}

CUresult cuGetErrorString(CUresult e, const char** s) {
    switch (e) {
        case CUDA_SUCCESS: *s = "no error"; break;
        case CUDA_ERROR_INVALID_VALUE: *s = "invalid argument"; break;
        case CUDA_ERROR_OUT_OF_MEMORY: *s = "out of memory"; break;
        case CUDA_ERROR_NOT_INITIALIZED: *s = "initialization error"; break;
        case CUDA_ERROR_NO_DEVICE: *s = "no CUDA-capable device is detected"; break;
        case CUDA_ERROR_INVALID_DEVICE: *s = "invalid device ordinal"; break;
        case CUDA_ERROR_INVALID_IMAGE: *s = "device kernel image is invalid"; break;
        case CUDA_ERROR_INVALID_CONTEXT: *s = "invalid device context"; break;
        case CUDA_ERROR_INVALID_HANDLE: *s = "invalid resource handle"; break;
        case CUDA_ERROR_ILLEGAL_STATE: *s = "the operation is not permitted in the current state"; break;
        case CUDA_ERROR_NOT_FOUND: *s = "named symbol not found"; break;
        case CUDA_ERROR_ILLEGAL_ADDRESS: *s = "an illegal memory access was encountered"; break;
        case CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: *s = "too many resources requested for launch"; break;
        case CUDA_ERROR_NOT_SUPPORTED: *s = "operation not supported"; break;
        default: *s = nullptr; return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

CUresult cuGetErrorName(CUresult e, const char** s) {
    return cuGetErrorString(e, s);
}

}  // extern "C"

// ================================================================ modules ==

struct Module {
    void* handle;
};
struct Func {
    const FakeKernel* k;
};

static const char CUBIN_MAGIC[] = "SCRIBED-FAKE-CUBIN\n";

extern "C" {

CUresult cuModuleLoadData(CUmodule* m, const void* image) {
    if (CUresult r = need_context("cuModuleLoadData")) return r;
    const char* img = static_cast<const char*>(image);
    if (std::strncmp(img, CUBIN_MAGIC, sizeof CUBIN_MAGIC - 1) != 0) return CUDA_ERROR_INVALID_IMAGE;
    const char* path = img + sizeof CUBIN_MAGIC - 1;
    void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        std::fprintf(stderr, "fake-cuda: cuModuleLoadData: %s\n", dlerror());
        return CUDA_ERROR_INVALID_IMAGE;
    }
    *m = new Module{h};
    std::lock_guard<std::mutex> g(dev().m);
    dev().n.modules++;
    return CUDA_SUCCESS;
}

CUresult cuModuleGetFunction(CUfunction* f, CUmodule m, const char* name) {
    if (CUresult r = need_context("cuModuleGetFunction")) return r;
    auto* k = static_cast<const FakeKernel*>(dlsym(m->handle, ("fake_kernel_" + std::string(name)).c_str()));
    if (!k) return CUDA_ERROR_NOT_FOUND;
    *f = new Func{k};
    return CUDA_SUCCESS;
}

CUresult cuModuleUnload(CUmodule m) {
    drain_all();  // launches of its kernels may still be queued
    // The library stays loaded: Func handles may outlive the module in
    // cudarc's drop order, and dlclose would unmap their code.
    delete m;
    return CUDA_SUCCESS;
}

static int check_kernel_pointer(const void* p, const char* kernel, int arg) {
    if (p == nullptr || inside(reinterpret_cast<uint64_t>(p), 1)) return 1;
    violation(CUDA_ERROR_ILLEGAL_ADDRESS, "%s: pointer argument %d (%p) is not inside a live allocation", kernel, arg, p);
    return 0;
}

CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shared, CUstream s, void** params, void** extra) {
    if (CUresult r = need_context("cuLaunchKernel")) return r;
    if (CUresult r = check_stream(s, "cuLaunchKernel")) return r;
    Use use(s, "cuLaunchKernel");
    if (!use.ok) return CUDA_ERROR_ILLEGAL_STATE;
    const char* name = f->k->name;
    if (extra != nullptr) not_modelled("cuLaunchKernel with `extra`");
    if (gy != 1 || gz != 1 || by != 1 || bz != 1) not_modelled("%s: a grid or block that is not one-dimensional", name);
    if (gx == 0 || bx == 0 || bx > 1024 || gx > 0x7fffffffu)
        return violation(CUDA_ERROR_INVALID_VALUE, "%s: launch <<<%u, %u>>> outside CUDA's limits", name, gx, bx);
    if (shared != 0) not_modelled("%s: dynamic shared memory", name);
    {
        // Fault injection, not sticky: this one launch is refused, as a
        // launch asking for more resources than the device has is.
        std::lock_guard<std::mutex> g(dev().m);
        if (++dev().n.launch_calls == dev().cfg.fail_at) return CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES;
    }
    void* bound = f->k->bind(params, check_kernel_pointer);
    if (!bound) return CUDA_ERROR_ILLEGAL_ADDRESS;
    const FakeKernel* k = f->k;
    enqueue(s, [k, bound, gx, bx] {
        k->run(bound, gx, bx);
        k->drop(bound);
    });
    std::lock_guard<std::mutex> g(dev().m);
    if (++dev().n.launches == dev().cfg.sticky_after) sticky = CUDA_ERROR_ILLEGAL_ADDRESS;
    return CUDA_SUCCESS;
}

}  // extern "C"

// ================================================================= NVRTC ==

struct Program {
    std::string src, name;
    std::vector<std::pair<std::string, std::string>> headers;  // (include name, text)
    std::string log, cubin;
};

namespace {

uint64_t fnv(uint64_t h, const std::string& s) {
    for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
    return h;
}

std::string read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

// The `extern "C" __global__` kernels of a source, by name.
std::vector<std::string> kernel_names(const std::string& src) {
    static const std::regex re(R"(extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\()");
    std::vector<std::string> names;
    for (auto it = std::sregex_iterator(src.begin(), src.end(), re); it != std::sregex_iterator(); ++it)
        names.push_back((*it)[1]);
    return names;
}

int run(const std::string& cmd, std::string& output) {
    FILE* p = popen((cmd + " 2>&1").c_str(), "r");
    if (!p) return -1;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) output.append(buf, n);
    return pclose(p);
}

// Compiles `p` with g++ into a cached shared library; returns its path.
int compile(Program& p, std::string& path) {
    const std::string kdir = FAKE_CUDA_KERNELS_DIR, sdir = FAKE_CUDA_SRC_DIR;
    const std::string shim = kdir + "/shim/cuda_shim.h", modh = sdir + "/fake_module.h";
    const std::string flags = "-std=c++20 -O2 -fPIC -shared -Wno-unused-parameter";
    uint64_t h = 0xcbf29ce484222325ull;
    h = fnv(h, p.src);
    for (auto& [n, t] : p.headers) h = fnv(fnv(h, n), t);
    h = fnv(fnv(fnv(h, read_file(shim)), read_file(modh)), flags);
    const std::string& cache = dev().cfg.cache;
    char hex[17];
    std::snprintf(hex, sizeof hex, "%016llx", (unsigned long long)h);
    path = cache + "/module-" + hex + ".so";
    if (access(path.c_str(), R_OK) == 0) return NVRTC_SUCCESS;

    const std::string work = cache + "/build-" + hex + "-" + std::to_string(getpid());
    std::string out;
    if (run("mkdir -p '" + work + "'", out) != 0) {
        p.log = "cannot create " + work + ": " + out;
        return NVRTC_ERROR_COMPILATION;
    }
    for (auto& [n, t] : p.headers) std::ofstream(work + "/" + n) << t;
    std::ofstream(work + "/program.cu") << p.src;
    {
        std::ofstream tu(work + "/module.cpp");
        tu << "#include \"program.cu\"\n";
        for (auto& k : kernel_names(p.src)) tu << "FAKE_KERNEL(" << k << ")\n";
    }
    const std::string tmp = work + "/module.so";
    const std::string cmd = "g++ " + flags + " -include '" + shim + "' -include '" + modh + "' -I '" + work + "' '" +
                            work + "/module.cpp' -o '" + tmp + "'";
    const int rc = run(cmd, out);
    if (rc != 0) {
        p.log = p.name + ": g++ (standing in for NVRTC) failed:\n" + out;
        run("rm -rf '" + work + "'", out);
        return NVRTC_ERROR_COMPILATION;
    }
    std::rename(tmp.c_str(), path.c_str());
    run("rm -rf '" + work + "'", out);
    return NVRTC_SUCCESS;
}

}  // namespace

extern "C" {

int nvrtcVersion(int* major, int* minor) {
    *major = 13;
    *minor = 0;
    return NVRTC_SUCCESS;
}

const char* nvrtcGetErrorString(int r) {
    switch (r) {
        case NVRTC_SUCCESS: return "NVRTC_SUCCESS";
        case NVRTC_ERROR_INVALID_INPUT: return "NVRTC_ERROR_INVALID_INPUT";
        case NVRTC_ERROR_INVALID_PROGRAM: return "NVRTC_ERROR_INVALID_PROGRAM";
        case NVRTC_ERROR_INVALID_OPTION: return "NVRTC_ERROR_INVALID_OPTION";
        case NVRTC_ERROR_COMPILATION: return "NVRTC_ERROR_COMPILATION";
        default: return "NVRTC_ERROR (fake)";
    }
}

int nvrtcCreateProgram(Program** out, const char* src, const char* name, int nh, const char* const* headers,
                       const char* const* names) {
    if (!out || !src) return NVRTC_ERROR_INVALID_INPUT;
    auto* p = new Program;
    p->src = src;
    p->name = name ? name : "default_program";
    for (int i = 0; i < nh; ++i) p->headers.emplace_back(names[i], headers[i]);
    *out = p;
    return NVRTC_SUCCESS;
}

int nvrtcCompileProgram(Program* p, int n, const char* const* options) {
    if (!p) return NVRTC_ERROR_INVALID_PROGRAM;
    for (int i = 0; i < n; ++i) {
        const std::string o = options[i];
        const bool known = o.rfind("--gpu-architecture=sm_", 0) == 0 || o == "--std=c++17" ||
                           o == "--generate-line-info" || o == "--ptxas-options=--verbose";
        if (!known) {
            p->log = "fake NVRTC: option not modelled: " + o + "\n";
            return NVRTC_ERROR_INVALID_OPTION;
        }
    }
    std::string path;
    const int r = compile(*p, path);
    if (r == NVRTC_SUCCESS) p->cubin = std::string(CUBIN_MAGIC) + path;
    return r;
}

int nvrtcGetProgramLogSize(Program* p, size_t* n) {
    *n = p->log.size() + 1;
    return NVRTC_SUCCESS;
}

int nvrtcGetProgramLog(Program* p, char* buf) {
    std::memcpy(buf, p->log.c_str(), p->log.size() + 1);
    return NVRTC_SUCCESS;
}

int nvrtcGetCUBINSize(Program* p, size_t* n) {
    if (p->cubin.empty()) return NVRTC_ERROR_INVALID_PROGRAM;
    *n = p->cubin.size() + 1;
    return NVRTC_SUCCESS;
}

int nvrtcGetCUBIN(Program* p, char* buf) {
    if (p->cubin.empty()) return NVRTC_ERROR_INVALID_PROGRAM;
    std::memcpy(buf, p->cubin.c_str(), p->cubin.size() + 1);
    return NVRTC_SUCCESS;
}

int nvrtcDestroyProgram(Program** p) {
    delete *p;
    *p = nullptr;
    return NVRTC_SUCCESS;
}

}  // extern "C"

// ================================================================ cuBLAS ==

struct Blas {
    Stream* stream = nullptr;
};

namespace {

// IEEE binary16 to binary32, exact.
float half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
    if (exp == 0x1fu) bits = sign | 0x7f800000u | (man << 13);
    else if (exp != 0) bits = sign | ((exp + 112u) << 23) | (man << 13);
    else if (man == 0) bits = sign;
    else {
        exp = 113;
        while ((man & 0x400u) == 0) man <<= 1, exp--;
        bits = sign | (exp << 23) | ((man & 0x3ffu) << 13);
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

// Extent in elements of a column-major operand of `rows × cols` with `ld`.
size_t extent(int rows, int cols, int ld) {
    return (size_t)ld * (size_t)(cols - 1) + (size_t)rows;
}

// Row `i` of op(X) (an `r × c` matrix after the op) as a contiguous float
// vector of length `c`, from X stored column-major with leading dimension ld.
template <class T>
void op_row(const T* x, int op, int ld, int i, int c, float* out, float (*conv)(T)) {
    for (int p = 0; p < c; ++p) out[p] = conv(op == CUBLAS_OP_N ? x[(size_t)i + (size_t)p * ld] : x[(size_t)p + (size_t)i * ld]);
}

float dot(const float* a, const float* b, int n) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int p = 0;
    for (; p + 8 <= n; p += 8)
        for (int j = 0; j < 8; ++j) acc[j] += a[p + j] * b[p + j];
    float s = 0;
    for (; p < n; ++p) s += a[p] * b[p];
    for (float v : acc) s += v;
    return s;
}

// C (m × n, ldc) = alpha · op(A) (m × k) · op(B) (k × n) + beta · C, column-major.
template <class T>
void gemm(int ta, int tb, int m, int n, int k, float alpha, const T* a, int lda, const T* b, int ldb, float beta,
          float* c, int ldc, float (*conv)(T)) {
    std::vector<float> ar((size_t)m * k), bc((size_t)n * k);
    for (int i = 0; i < m; ++i) op_row(a, ta, lda, i, k, &ar[(size_t)i * k], conv);
    // Column j of op(B) is row j of op(B)ᵀ.
    for (int j = 0; j < n; ++j) op_row(b, tb == CUBLAS_OP_N ? CUBLAS_OP_T : CUBLAS_OP_N, ldb, j, k, &bc[(size_t)j * k], conv);
    for (int j = 0; j < n; ++j)
        for (int i = 0; i < m; ++i) {
            float& out = c[(size_t)i + (size_t)j * ldc];
            const float v = alpha * dot(&ar[(size_t)i * k], &bc[(size_t)j * k], k);
            out = beta == 0.0f ? v : v + beta * out;  // beta 0: C is not read
        }
}

float f32_id(float x) {
    return x;
}

int check_handle(Blas* h, const char* call) {
    if (!h) return violation(CUBLAS_STATUS_NOT_INITIALIZED, "%s with a null handle", call);
    if (need_context(call)) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (check_stream(h->stream, call)) return CUBLAS_STATUS_EXECUTION_FAILED;
    return CUBLAS_STATUS_SUCCESS;
}

// cuBLAS's argument rules for one GEMM; a violation names the first broken one.
int check_gemm(const char* call, int ta, int tb, int m, int n, int k, int lda, int ldb, int ldc) {
    if ((ta != CUBLAS_OP_N && ta != CUBLAS_OP_T) || (tb != CUBLAS_OP_N && tb != CUBLAS_OP_T))
        not_modelled("%s: transpose ops other than N and T", call);
    if (m < 0 || n < 0 || k < 0) return violation(CUBLAS_STATUS_INVALID_VALUE, "%s: negative dimension", call);
    const int rows_a = ta == CUBLAS_OP_N ? m : k, rows_b = tb == CUBLAS_OP_N ? k : n;
    if (lda < std::max(1, rows_a))
        return violation(CUBLAS_STATUS_INVALID_VALUE, "%s: lda %d < %d (rows of A as stored)", call, lda, rows_a);
    if (ldb < std::max(1, rows_b))
        return violation(CUBLAS_STATUS_INVALID_VALUE, "%s: ldb %d < %d (rows of B as stored)", call, ldb, rows_b);
    if (ldc < std::max(1, m)) return violation(CUBLAS_STATUS_INVALID_VALUE, "%s: ldc %d < m %d", call, ldc, m);
    return CUBLAS_STATUS_SUCCESS;
}

int check_operand(const char* call, const char* which, const void* p, int rows, int cols, int ld, size_t elem) {
    if (rows == 0 || cols == 0) return CUBLAS_STATUS_SUCCESS;
    const size_t bytes = extent(rows, cols, ld) * elem;
    if (inside(reinterpret_cast<uint64_t>(p), bytes)) return CUBLAS_STATUS_SUCCESS;
    return violation(CUBLAS_STATUS_EXECUTION_FAILED, "%s: %s [%p, +%zu bytes) is not inside one live allocation", call,
                     which, p, bytes);
}

// The smallest batch distance at which two batches of a column-major
// `m × n` C (ldc, strideC sc) share an element, or 0. Batch b writes
// b·sc + i + j·ldc (i < m, j < n); distinct elements of one batch never
// collide since ldc ≥ m, so batches Δ apart collide iff Δ·sc lies within
// m − 1 of some Δj·ldc with |Δj| < n.
long long batches_overlap(int m, int n, int ldc, long long sc, int batches) {
    if (m == 0 || n == 0) return 0;
    for (long long db = 1; db < batches; ++db) {
        const long long delta = std::llabs(db * sc);
        const long long q = delta / ldc;
        for (long long dj = q; dj <= q + 1; ++dj)
            if (dj < n && std::llabs(delta - dj * ldc) < m) return db;
    }
    return 0;
}

void count_gemm() {
    std::lock_guard<std::mutex> g(dev().m);
    dev().n.gemms++;
}

}  // namespace

extern "C" {

int cublasCreate_v2(Blas** h) {
    if (need_context("cublasCreate")) return CUBLAS_STATUS_NOT_INITIALIZED;
    *h = new Blas;
    std::lock_guard<std::mutex> g(dev().m);
    dev().n.blas_handles++;
    return CUBLAS_STATUS_SUCCESS;
}

int cublasDestroy_v2(Blas* h) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}

int cublasSetStream_v2(Blas* h, Stream* s) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (check_stream(s, "cublasSetStream")) return CUBLAS_STATUS_INVALID_VALUE;
    h->stream = s;
    return CUBLAS_STATUS_SUCCESS;
}

int cublasSetWorkspace_v2(Blas* h, void* ws, size_t bytes) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (check_range(reinterpret_cast<uint64_t>(ws), bytes, "cublasSetWorkspace")) return CUBLAS_STATUS_INVALID_VALUE;
    if (reinterpret_cast<uint64_t>(ws) % 256 != 0)
        return violation(CUBLAS_STATUS_INVALID_VALUE, "cublasSetWorkspace: workspace not 256-byte aligned");
    return CUBLAS_STATUS_SUCCESS;
}

int cublasGemmEx(Blas* h, int ta, int tb, int m, int n, int k, const void* alpha, const void* a, int atype, int lda,
                 const void* b, int btype, int ldb, const void* beta, void* c, int ctype, int ldc, int compute,
                 int /*algo*/) {
    const char* call = "cublasGemmEx";
    if (int r = check_handle(h, call)) return r;
    Use use(h->stream, call);
    if (!use.ok) return CUBLAS_STATUS_EXECUTION_FAILED;
    if (atype != CUDA_R_16F || btype != CUDA_R_16F || ctype != CUDA_R_32F || compute != CUBLAS_COMPUTE_32F)
        not_modelled("%s with types A %d B %d C %d compute %d (only f16·f16→f32, compute 32F)", call, atype, btype, ctype,
                     compute);
    if (int r = check_gemm(call, ta, tb, m, n, k, lda, ldb, ldc)) return r;
    const bool an = ta == CUBLAS_OP_N, bn = tb == CUBLAS_OP_N;
    if (int r = check_operand(call, "A", a, an ? m : k, an ? k : m, lda, 2)) return r;
    if (int r = check_operand(call, "B", b, bn ? k : n, bn ? n : k, ldb, 2)) return r;
    if (int r = check_operand(call, "C", c, m, n, ldc, 4)) return r;
    const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
    enqueue(h->stream, [=] {
        gemm<uint16_t>(ta, tb, m, n, k, al, static_cast<const uint16_t*>(a), lda, static_cast<const uint16_t*>(b), ldb, be,
                       static_cast<float*>(c), ldc, half_to_float);
    });
    count_gemm();
    return CUBLAS_STATUS_SUCCESS;
}

int cublasSgemmStridedBatched(Blas* h, int ta, int tb, int m, int n, int k, const float* alpha, const float* a, int lda,
                              long long sa, const float* b, int ldb, long long sb, const float* beta, float* c, int ldc,
                              long long sc, int batches) {
    const char* call = "cublasSgemmStridedBatched";
    if (int r = check_handle(h, call)) return r;
    Use use(h->stream, call);
    if (!use.ok) return CUBLAS_STATUS_EXECUTION_FAILED;
    if (int r = check_gemm(call, ta, tb, m, n, k, lda, ldb, ldc)) return r;
    if (batches < 0) return violation(CUBLAS_STATUS_INVALID_VALUE, "%s: negative batch count", call);
    // Two batches writing one element of C is a race on a GPU.
    if (long long o = batches_overlap(m, n, ldc, sc, batches))
        return violation(CUBLAS_STATUS_INVALID_VALUE,
                         "%s: batches %lld apart write the same elements of C (ldc %d, strideC %lld, m %d, n %d)", call,
                         o, ldc, sc, m, n);
    const bool an = ta == CUBLAS_OP_N, bn = tb == CUBLAS_OP_N;
    for (int i = 0; i < batches; ++i) {
        if (int r = check_operand(call, "A", a + i * sa, an ? m : k, an ? k : m, lda, 4)) return r;
        if (int r = check_operand(call, "B", b + i * sb, bn ? k : n, bn ? n : k, ldb, 4)) return r;
        if (int r = check_operand(call, "C", c + i * sc, m, n, ldc, 4)) return r;
    }
    const float al = *alpha, be = *beta;
    enqueue(h->stream, [=] {
        for (int i = 0; i < batches; ++i)
            gemm<float>(ta, tb, m, n, k, al, a + i * sa, lda, b + i * sb, ldb, be, c + i * sc, ldc, f32_id);
    });
    count_gemm();
    return CUBLAS_STATUS_SUCCESS;
}

const char* cublasGetStatusString(int s) {
    switch (s) {
        case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
        case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
        case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
        case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
        default: return "CUBLAS_STATUS (fake)";
    }
}

}  // extern "C"
