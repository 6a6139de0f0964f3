// convert.cu — float32 <-> float16 for the GEMM operands.
//
// cuBLAS GemmEx multiplies f16 by f16 (fp32 accumulation, f32 output): a
// linear layer first narrows its input, a band of columns of an f32
// activation buffer, into a dense f16 scratch matrix.
#include "common.cuh"

// dst[r][c] = f16(src[r·src_stride + src_col + c]), r < rows, c < width.
extern "C" __global__ void f32_to_f16_2d(const float* __restrict__ src, int src_stride, int src_col,
                                         int rows, int width, f16bits* __restrict__ dst) {
    const size_t n = (size_t)rows * (size_t)width;
    const size_t step = (size_t)gridDim.x * blockDim.x;
    for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += step) {
        const size_t r = e / (size_t)width;
        const size_t c = e - r * (size_t)width;
        dst[e] = f32_to_f16(src[r * (size_t)src_stride + (size_t)src_col + c]);
    }
}

extern "C" __global__ void f16_to_f32_1d(const f16bits* __restrict__ src, float* __restrict__ dst, int n) {
    const size_t step = (size_t)gridDim.x * blockDim.x;
    for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < (size_t)n; e += step) {
        dst[e] = f16_to_f32(src[e]);
    }
}
