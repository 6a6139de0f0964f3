// conv.cu — the encoder's convolution stem as a GEMM: im2col for a
// kernel-3, padding-1 convolution over time, written as float16 so cuBLAS
// multiplies it with the f16 weights (fp32 accumulation); bias and GELU
// follow in epilogue.cu.
//
// Row t of `cols` holds x[t·stride − 1 + j][c] at column c·3 + j (CT2's
// [out, in, 3] weight flattened as in·3 + tap), zero outside the input.
#include "common.cuh"

extern "C" __global__ void im2col_k3_f16(const float* __restrict__ x, int t_in, int c_in, int stride,
                                         int t_out, f16bits* __restrict__ cols) {
    const size_t k3 = (size_t)c_in * 3;
    const size_t n = (size_t)t_out * k3;
    const size_t step = (size_t)gridDim.x * blockDim.x;
    for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += step) {
        const size_t t = e / k3;
        const int rem = (int)(e - t * k3);
        const int c = rem / 3;
        const int j = rem - c * 3;
        const long long src = (long long)t * stride + j - 1;
        const float v = (src >= 0 && src < t_in) ? x[(size_t)src * c_in + c] : 0.0f;
        cols[e] = f32_to_f16(v);
    }
}
