// common.cuh — helpers shared by every kernel in kernels/.
//
// Header-free on purpose: the binary compiles these sources with NVRTC at
// start-up, and a machine with only the driver, NVRTC and cuBLAS has no CUDA
// include directory to find <cuda_fp16.h> in. So float16 travels as its bit
// pattern (`f16bits`) and is converted with one PTX instruction on the GPU.
// Everything outside `#ifdef __CUDA_ARCH__` is plain C++ so that the same
// files also compile with g++ under kernels/shim/cuda_shim.h (the CI check of
// the kernels' arithmetic on a machine without a GPU).
#pragma once

typedef unsigned short f16bits;

// +inf without <math_constants.h> (NVRTC has no INFINITY either): the same
// bit pattern CUDART_INF_F expands to.
#define SCRIBED_INF_F __int_as_float(0x7f800000)

// Threads per block of the row-wise kernels (one block per row). The host
// side launches with exactly this many (src/backend/cuda/kernels.rs).
#define ROW_THREADS 256

__device__ __forceinline__ float f16_to_f32(f16bits h) {
#ifdef __CUDA_ARCH__
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#else
    // IEEE binary16 -> binary32, exact (every half is a float).
    const unsigned sign = (unsigned)(h & 0x8000u) << 16;
    unsigned exp = (h >> 10) & 0x1fu;
    unsigned man = h & 0x3ffu;
    unsigned bits;
    if (exp == 0x1fu) {
        bits = sign | 0x7f800000u | (man << 13);          // inf / nan
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);  // normal
    } else if (man == 0) {
        bits = sign;                                       // +-0
    } else {                                               // subnormal: normalise
        exp = 113;
        while ((man & 0x400u) == 0) { man <<= 1; exp--; }
        bits = sign | (exp << 23) | ((man & 0x3ffu) << 13);
    }
    return __int_as_float((int)bits);
#endif
}

__device__ __forceinline__ f16bits f32_to_f16(float f) {
#ifdef __CUDA_ARCH__
    f16bits h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
#else
    // binary32 -> binary16, round to nearest even, as cvt.rn.f16.f32 does.
    const unsigned x = (unsigned)__float_as_int(f);
    const unsigned sign = (x >> 16) & 0x8000u;
    const unsigned ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) {                               // inf / nan (keep nan quiet)
        return (f16bits)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u | ((ax >> 13) & 0x3ffu) : 0u));
    }
    if (ax >= 0x477ff000u) return (f16bits)(sign | 0x7c00u);  // rounds to >= 65520: inf
    if (ax < 0x38800000u) {                                // result is subnormal or zero
        if (ax < 0x33000000u) return (f16bits)sign;        // < half the smallest subnormal
        const unsigned e = ax >> 23;
        const unsigned m = (ax & 0x7fffffu) | 0x800000u;
        const unsigned shift = 126u - e;                   // 14..24
        unsigned r = m >> shift;
        const unsigned rem = m & ((1u << shift) - 1u);
        const unsigned half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (r & 1u))) r++;
        return (f16bits)(sign | r);
    }
    unsigned r = ((ax >> 13) - (112u << 10));              // rebias exponent, keep 10 bits
    const unsigned rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) r++;  // carries into the exponent correctly
    return (f16bits)(sign | r);
#endif
}

// Exact GELU, 0.5·x·(1 + erf(x/√2)), as CTranslate2 and Whisper use (not the
// tanh approximation cuBLASLt's epilogue offers).
__device__ __forceinline__ float gelu_erf(float x) {
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block, returned to every thread. Every thread of the block
// must call it (it has barriers); blockDim.x is a multiple of 32, at most
// 1024. `red` is 32 floats of shared memory, reusable by the next call.
__device__ __forceinline__ float block_sum(float v, float* red) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int warps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();  // a previous call's readers are done with `red`
    if (lane == 0) red[warp] = v;
    __syncthreads();
    // Every warp reduces the partials itself: no broadcast round needed.
    return warp_sum(lane < warps ? red[lane] : 0.0f);
}

__device__ __forceinline__ float block_max(float v, float* red) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int warps = (blockDim.x + 31) >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    return warp_max(lane < warps ? red[lane] : -SCRIBED_INF_F);
}
