// softmax.cu — attention weights: scale, causal mask, softmax, and an
// optional copy of selected heads' weights (the alignment heads behind word
// timestamps).
//
// The scores come from a batched cuBLAS GEMM (q · kᵀ per head) laid out as
// [batch][q_len][kv_len], batch b being head (head0 + b) % heads of some
// sequence. One block per row. Query i of a row sees keys
// 0 ..= kv_len − q_len + i when `causal`, all of them otherwise; masked
// entries become exactly 0 so the following p · v GEMM may run over the
// whole row.
#include "common.cuh"

// Where head h's weights go in `probs`: slot[h] >= 0 writes rows
// slot[h]·q_len .. of `probs` ([slots·q_len][kv_len]); −1 skips the head.
// Passed by value (256 bytes of kernel parameters), so selecting heads needs
// no device memory and no upload.
#define MAX_HEADS 64
struct HeadSlots {
    int slot[MAX_HEADS];
};

extern "C" __global__ void __launch_bounds__(ROW_THREADS)
attn_softmax_f32(float* __restrict__ scores, int rows, int q_len, int kv_len,
                 int heads, int head0, float scale, int causal,
                 float* __restrict__ probs, HeadSlots slots) {
    __shared__ float red[32];
    const int r = blockIdx.x;
    if (r >= rows) return;
    const int i = r % q_len;
    const int h = (head0 + r / q_len) % heads;
    int visible = causal ? kv_len - q_len + i + 1 : kv_len;
    visible = visible < 0 ? 0 : (visible > kv_len ? kv_len : visible);
    float* s = scores + (size_t)r * kv_len;

    float m = -SCRIBED_INF_F;
    for (int j = threadIdx.x; j < visible; j += blockDim.x) m = fmaxf(m, s[j] * scale);
    m = block_max(m, red);

    float sum = 0.0f;
    for (int j = threadIdx.x; j < visible; j += blockDim.x) {
        const float e = __expf(s[j] * scale - m);
        s[j] = e;
        sum += e;
    }
    sum = block_sum(sum, red);
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;

    const int slot = (probs && h < MAX_HEADS) ? slots.slot[h] : -1;
    float* p = slot >= 0 ? probs + ((size_t)slot * q_len + i) * kv_len : 0;
    // Each thread rescales the same entries it exponentiated: no barrier needed.
    for (int j = threadIdx.x; j < kv_len; j += blockDim.x) {
        const float v = j < visible ? s[j] * inv : 0.0f;
        s[j] = v;
        if (p) p[j] = v;
    }
}
