// gather.cu — row copies by index: new K/V rows into a sequence's cache,
// the last position of each sequence before the logits, and the beam
// reorder of the self-attention caches (through a spare buffer, so source
// and destination never alias).
#include "common.cuh"

// dst[dst_rows[k]][c] = src[src_rows[k]·src_stride + src_col + c], k < n,
// c < width; dst rows are `width` wide. One block per copied row.
extern "C" __global__ void gather_rows_f32(const float* __restrict__ src, int src_stride, int src_col,
                                           const unsigned* __restrict__ src_rows,
                                           float* __restrict__ dst, const unsigned* __restrict__ dst_rows,
                                           int n, int width) {
    const int k = blockIdx.x;
    if (k >= n) return;
    const float* s = src + (size_t)src_rows[k] * src_stride + src_col;
    float* d = dst + (size_t)dst_rows[k] * width;
    for (int c = threadIdx.x; c < width; c += blockDim.x) d[c] = s[c];
}
