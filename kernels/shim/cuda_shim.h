// cuda_shim.h — enough of the CUDA execution model for g++ to compile and
// run the unchanged kernels/*.cu on a CPU (force-included with -include).
//
// Why: CI has no GPU. This runs the kernels' arithmetic — indexing, masking,
// reductions, f16 conversion — so tests can compare it with the CPU backend.
// How: every CUDA thread is a std::thread; the blocks of a grid run one after
// another, so `__shared__` can be a function-local `static`; __syncthreads
// is a std::barrier over the block, warp shuffles a std::barrier over the
// warp plus an exchange array. A thread that returns early drops out of both
// barriers, as exited threads do on the GPU.
// What it cannot show: inline PTX (the kernels keep a C++ path for it under
// #ifndef __CUDA_ARCH__), atomics, dynamic shared memory, warp lock-step,
// the GPU memory model, speed. Those are for the GPU run.
#pragma once

#include <barrier>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
    dim3() = default;
    dim3(unsigned x_, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

namespace shim {
struct Warp {
    explicit Warp(std::ptrdiff_t n) : bar(n) {}
    std::barrier<> bar;
    float vals[32] = {};
};
struct Block {
    explicit Block(std::ptrdiff_t n) : bar(n) {}
    std::barrier<> bar;
};
inline thread_local Block* block = nullptr;
inline thread_local Warp* warp = nullptr;
}  // namespace shim

inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline float __expf(float x) { return std::exp(x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __fdividef(float a, float b) { return a / b; }

inline void __syncthreads() { shim::block->bar.arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned /*mask*/, float v, int lane_mask) {
    shim::Warp& w = *shim::warp;
    const unsigned lane = threadIdx.x & 31u;
    const unsigned width = (blockDim.x - (threadIdx.x & ~31u)) < 32u ? blockDim.x - (threadIdx.x & ~31u) : 32u;
    w.vals[lane] = v;
    w.bar.arrive_and_wait();
    const unsigned src = lane ^ (unsigned)lane_mask;
    const float r = src < width ? w.vals[src] : v;
    w.bar.arrive_and_wait();  // nobody overwrites vals before everyone read
    return r;
}

// launch(grid, block, kernel, args...): kernel<<<grid, block>>>(args...),
// one-dimensional grids and blocks, synchronous. The `block` threads are
// made once per launch and run the blocks one after another (each block gets
// fresh barriers, since threads that exit early drop out of them).
template <class... P, class... A>
void launch(unsigned grid, unsigned threads, void (*kernel)(P...), A... args) {
    std::barrier<> start(threads + 1), done(threads + 1);
    std::unique_ptr<shim::Block> blk;
    std::vector<std::unique_ptr<shim::Warp>> warps;
    unsigned b = 0;
    std::vector<std::thread> ts;
    ts.reserve(threads);
    for (unsigned t = 0; t < threads; ++t) {
        ts.emplace_back([&, t] {
            for (;;) {
                start.arrive_and_wait();  // the main thread set up block b
                if (b == grid) return;
                threadIdx = dim3(t);
                blockIdx = dim3(b);
                blockDim = dim3(threads);
                gridDim = dim3(grid);
                shim::block = blk.get();
                shim::warp = warps[t / 32].get();
                kernel(static_cast<P>(args)...);
                // An exited thread no longer counts at barriers.
                shim::warp->bar.arrive_and_drop();
                shim::block->bar.arrive_and_drop();
                done.arrive_and_wait();
            }
        });
    }
    for (;; ++b) {
        if (b < grid) {
            blk = std::make_unique<shim::Block>(threads);
            warps.clear();
            for (unsigned w = 0; w < (threads + 31) / 32; ++w) {
                const unsigned n = threads - w * 32 < 32 ? threads - w * 32 : 32;
                warps.push_back(std::make_unique<shim::Warp>(n));
            }
        }
        start.arrive_and_wait();
        if (b == grid) break;
        done.arrive_and_wait();
    }
    for (auto& t : ts) t.join();
}
