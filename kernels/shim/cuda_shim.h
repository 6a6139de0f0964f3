// cuda_shim.h — enough of the CUDA execution model for g++ to compile and
// run the unchanged kernels/*.cu on a CPU (force-included with -include).
//
// Why: CI has no GPU. This runs the kernels' arithmetic — indexing, masking,
// reductions, f16 conversion — so tests can compare it with the CPU backend
// (tests/kernels_cpu.rs), and the fake CUDA device (tests/fake_cuda/) runs
// the backend's launches through it.
// How: every CUDA thread of a block is a fiber (its own small stack, switched
// to by a few instructions, not an OS thread: 256 OS threads per block cost
// 30–40 ms, fibers microseconds). One OS thread runs a block's fibers round
// by round: a fiber runs until it reaches `__syncthreads` (a block barrier)
// or a warp shuffle (a warp barrier), or returns. A barrier opens when every
// fiber of its block (or warp) that has not returned waits at it, as exited
// threads drop out of barriers on the GPU. A barrier that can never open
// (some threads wait at `__syncthreads` that others skipped) is a kernel bug:
// the launch aborts with a message. Blocks run one after another, so
// `__shared__` is a per-OS-thread static.
// What it cannot show: inline PTX (the kernels keep a C++ path for it under
// #ifndef __CUDA_ARCH__), atomics, dynamic shared memory, warp lock-step,
// the GPU memory model, speed. Those are for the GPU run.
#pragma once

#include <sys/mman.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static thread_local

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
    dim3() = default;
    dim3(unsigned x_, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

// Switches stacks: saves the callee-saved registers on the current stack,
// stores its pointer in *save, and resumes the stack `next` (System V
// x86-64; a local symbol per translation unit).
extern "C" void shim_switch(void** save, void* next);
#if defined(__x86_64__)
asm(R"(
    .text
    .p2align 4
    .type shim_switch,@function
shim_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size shim_switch, .-shim_switch
)");
#else
#error "cuda_shim.h: fibers are written for x86-64 only"
#endif

namespace shim {

enum class Wait : unsigned char { Run, Block, Warp, Done };

struct Fiber {
    void* sp = nullptr;
    Wait wait = Wait::Run;
    float shfl = 0.0f;  // the value this lane offers at a shuffle
    int line = 0;       // where it waits at __syncthreads
};

// Fiber stacks, made once per OS thread and reused by every block.
constexpr size_t STACK = 64 * 1024, GUARD = 4096, MAX_THREADS = 1024;

struct Sched {
    void* main_sp = nullptr;
    Fiber fibers[MAX_THREADS];
    unsigned n = 0, cur = 0;
    void (*body)(void*) = nullptr;
    void* arg = nullptr;
    unsigned char* stacks = nullptr;

    Sched() {
        const size_t bytes = (STACK + GUARD) * MAX_THREADS;
        void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) fail("cannot map fiber stacks");
        stacks = static_cast<unsigned char*>(p);
        // A guard page below each stack turns an overflow into a crash, not
        // a silent write into the next fiber's stack.
        for (size_t i = 0; i < MAX_THREADS; ++i) mprotect(stacks + i * (STACK + GUARD), GUARD, PROT_NONE);
    }
    ~Sched() { munmap(stacks, (STACK + GUARD) * MAX_THREADS); }

    [[noreturn]] static void fail(const char* what) {
        std::fprintf(stderr, "cuda_shim: %s\n", what);
        std::abort();
    }
};

inline Sched& sched() {
    static thread_local Sched s;
    return s;
}

inline void set_thread(unsigned t) {
    threadIdx = dim3(t);
}

// Where every fiber starts: runs the kernel body for its thread, then
// returns to the scheduler for good.
[[noreturn]] inline void entry() {
    Sched& s = sched();
    s.body(s.arg);
    s.fibers[s.cur].wait = Wait::Done;
    shim_switch(&s.fibers[s.cur].sp, s.main_sp);
    Sched::fail("a finished fiber was resumed");
}

// A fresh stack for fiber t: entry() as the return address of a
// shim_switch frame (six saved registers), aligned as after a call.
inline void prime(Sched& s, unsigned t) {
    unsigned char* top = s.stacks + t * (STACK + GUARD) + GUARD + STACK;
    void** sp = reinterpret_cast<void**>(top) - 2;  // 16-aligned, then a slot for a fake return address
    sp[1] = nullptr;
    sp[0] = reinterpret_cast<void*>(&entry);
    sp -= 6;
    for (int i = 0; i < 6; ++i) sp[i] = nullptr;
    s.fibers[t] = Fiber{sp, Wait::Run, 0.0f, 0};
}

inline void yield(Wait w) {
    Sched& s = sched();
    s.fibers[s.cur].wait = w;
    shim_switch(&s.fibers[s.cur].sp, s.main_sp);
}

// Opens the barriers that every live fiber of their block (or warp) waits
// at; says whether any opened.
inline bool open_barriers(Sched& s) {
    bool opened = false;
    // The block barrier: every live fiber waits at __syncthreads.
    bool all_block = true, any_live = false;
    for (unsigned t = 0; t < s.n; ++t) {
        if (s.fibers[t].wait == Wait::Done) continue;
        any_live = true;
        all_block &= s.fibers[t].wait == Wait::Block;
    }
    if (any_live && all_block) {
        int line = -1;
        for (unsigned t = 0; t < s.n; ++t) {
            if (s.fibers[t].wait != Wait::Block) continue;
            if (line >= 0 && s.fibers[t].line != line)
                Sched::fail("threads of one block wait at different __syncthreads (a barrier inside a branch)");
            line = s.fibers[t].line;
        }
        for (unsigned t = 0; t < s.n; ++t)
            if (s.fibers[t].wait == Wait::Block) s.fibers[t].wait = Wait::Run;
        return true;
    }
    // Warp barriers: every live lane of a warp waits at a shuffle.
    for (unsigned w0 = 0; w0 < s.n; w0 += 32) {
        const unsigned w1 = w0 + 32 < s.n ? w0 + 32 : s.n;
        bool all_warp = true, live = false;
        for (unsigned t = w0; t < w1; ++t) {
            if (s.fibers[t].wait == Wait::Done) continue;
            live = true;
            all_warp &= s.fibers[t].wait == Wait::Warp;
        }
        if (live && all_warp) {
            for (unsigned t = w0; t < w1; ++t)
                if (s.fibers[t].wait == Wait::Warp) s.fibers[t].wait = Wait::Run;
            opened = true;
        }
    }
    return opened;
}

// Runs one block: fibers round by round until all have returned.
inline void run_block(Sched& s) {
    for (unsigned t = 0; t < s.n; ++t) prime(s, t);
    for (;;) {
        // Each runnable fiber runs until it waits at a barrier or returns.
        for (unsigned t = 0; t < s.n; ++t) {
            if (s.fibers[t].wait != Wait::Run) continue;
            s.cur = t;
            set_thread(t);
            shim_switch(&s.main_sp, s.fibers[t].sp);
        }
        bool done = true;
        for (unsigned t = 0; t < s.n; ++t) done &= s.fibers[t].wait == Wait::Done;
        if (done) return;
        if (!open_barriers(s)) {
            Sched::fail("a barrier that not every thread of the block reaches (__syncthreads or a shuffle "
                        "inside a branch some threads skip)");
        }
    }
}

}  // namespace shim

inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline float __expf(float x) { return std::exp(x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __fdividef(float a, float b) { return a / b; }

inline void __syncthreads(int line = __builtin_LINE()) {
    shim::sched().fibers[threadIdx.x].line = line;
    shim::yield(shim::Wait::Block);
}

inline float __shfl_xor_sync(unsigned /*mask*/, float v, int lane_mask) {
    shim::Sched& s = shim::sched();
    const unsigned t = threadIdx.x, w0 = t & ~31u;
    const unsigned width = blockDim.x - w0 < 32u ? blockDim.x - w0 : 32u;
    s.fibers[t].shfl = v;
    shim::yield(shim::Wait::Warp);  // every lane has offered its value
    const unsigned src = (t & 31u) ^ (unsigned)lane_mask;
    const float r = src < width && s.fibers[w0 + src].wait != shim::Wait::Done ? s.fibers[w0 + src].shfl : v;
    shim::yield(shim::Wait::Warp);  // nobody offers a new value before everyone read
    return r;
}

// launch(grid, block, kernel, args...): kernel<<<grid, block>>>(args...),
// one-dimensional grids and blocks, synchronous, on the calling OS thread.
template <class... P, class... A>
void launch(unsigned grid, unsigned threads, void (*kernel)(P...), A... args) {
    if (threads == 0 || threads > shim::MAX_THREADS) shim::Sched::fail("block size out of range (1..1024)");
    auto call = [&]() { kernel(static_cast<P>(args)...); };
    using Fn = decltype(call);
    shim::Sched& s = shim::sched();
    s.n = threads;
    s.arg = &call;
    s.body = [](void* c) { (*static_cast<Fn*>(c))(); };
    blockDim = dim3(threads);
    gridDim = dim3(grid);
    for (unsigned b = 0; b < grid; ++b) {
        blockIdx = dim3(b);
        shim::run_block(s);
    }
}
