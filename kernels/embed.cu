// embed.cu — the decoder's token + position embedding and the encoder's
// position add, reading float16 tables (weights live on the GPU as f16).
#include "common.cuh"

// out[i] = emb[tokens[i]] + pos[pos0 + i % seq_len], i < n; one block per
// row, threads across d. Indices are checked on the host before launch; an
// index that is out of range anyway yields a NaN row rather than a read
// outside the table.
extern "C" __global__ void embed_f16(const unsigned* __restrict__ tokens, int n, int seq_len, int pos0,
                                     const f16bits* __restrict__ emb, int vocab,
                                     const f16bits* __restrict__ pos, int n_pos,
                                     float* __restrict__ out, int d) {
    const int i = blockIdx.x;
    if (i >= n) return;
    const unsigned t = tokens[i];
    const int p = pos0 + i % seq_len;
    float* o = out + (size_t)i * d;
    const bool ok = t < (unsigned)vocab && p >= 0 && p < n_pos;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        o[j] = ok ? f16_to_f32(emb[(size_t)t * d + j]) + f16_to_f32(pos[(size_t)p * d + j])
                  : __int_as_float(0x7fc00000);
    }
}

// x[i] += table[offset + i], i < rows (the encoder's sinusoidal positions).
extern "C" __global__ void add_rows_f16(float* __restrict__ x, int rows, int d,
                                        const f16bits* __restrict__ table, int offset) {
    const size_t n = (size_t)rows * (size_t)d;
    const size_t step = (size_t)gridDim.x * blockDim.x;
    const f16bits* t = table + (size_t)offset * d;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        x[i] += f16_to_f32(t[i]);
    }
}
