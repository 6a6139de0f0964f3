// layer_norm.cu — LayerNorm over the rows of an f32 activation buffer.
//
// One block of ROW_THREADS threads per row. Mean first, then the variance
// around it (two passes over the row, as the CPU backend computes it), so
// rows with a large mean lose no precision to E[x²] − E[x]².
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(ROW_THREADS)
layer_norm_f32(const float* __restrict__ x, const float* __restrict__ gamma,
               const float* __restrict__ beta, float* __restrict__ out,
               int rows, int d, float eps) {
    __shared__ float red[32];
    const int row = blockIdx.x;
    if (row >= rows) return;  // the whole block leaves together: no barrier skipped
    const float* xr = x + (size_t)row * d;
    float* o = out + (size_t)row * d;

    float s = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) s += xr[i];
    const float mean = block_sum(s, red) / (float)d;

    float v = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        const float t = xr[i] - mean;
        v += t * t;
    }
    const float inv = rsqrtf(block_sum(v, red) / (float)d + eps);

    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        o[i] = (xr[i] - mean) * inv * gamma[i] + beta[i];
    }
}
