// epilogue.cu — what follows a cuBLAS GEMM: bias, exact GELU, residual add.
//
// dst[r][c] = (accumulate ? dst[r][c] : 0) + act(src[r][c] + bias[c])
//
// `src` may be `dst` (in-place bias / GELU on the GEMM's output); the
// residual connection of a linear layer without activation is done by the
// GEMM itself (beta = 1) and only its bias comes through here. With an
// activation and `accumulate`, the GEMM writes to scratch and this kernel
// adds act(...) to the residual stream. A null `bias` means no bias.
#include "common.cuh"

extern "C" __global__ void bias_act_f32(const float* src, const float* bias, float* dst,
                                        int rows, int cols, int gelu, int accumulate) {
    const size_t n = (size_t)rows * (size_t)cols;
    const size_t step = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        float y = src[i];
        if (bias) y += bias[i % (size_t)cols];
        if (gelu) y = gelu_erf(y);
        dst[i] = accumulate ? dst[i] + y : y;
    }
}
