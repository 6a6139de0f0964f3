// harness.cpp — runs one kernel of kernels/*.cu on the CPU through
// cuda_shim.h, for tests/kernels_cpu.rs.
//
//   harness OP IN OUT
//
// IN:  "SKRN", u32 n_params, f64 params[n], u32 n_arrays, arrays
// OUT: u32 n_arrays, arrays (every array, after the kernel ran)
// array: u32 dtype (0 f32, 1 f16 bits, 2 u32/i32), u64 len, len elements.
// params[0], params[1] are the grid and block sizes the Rust side chose
// (kernels::Launch), so the launch geometry under test is the backend's own.
// An empty array stands for a null pointer.
#include "layer_norm.cu"
#include "epilogue.cu"
#include "embed.cu"
#include "softmax.cu"
#include "conv.cu"
#include "convert.cu"
#include "gather.cu"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace {
struct Array {
    uint32_t dtype = 0;
    std::vector<unsigned char> bytes;
    size_t elem() const { return dtype == 1 ? 2 : 4; }
    void* ptr() { return bytes.empty() ? nullptr : bytes.data(); }
};

[[noreturn]] void die(const std::string& m) {
    std::fprintf(stderr, "harness: %s\n", m.c_str());
    std::exit(2);
}

void read_exact(FILE* f, void* p, size_t n) {
    if (n && std::fread(p, 1, n, f) != n) die("short read");
}
}  // namespace

int main(int argc, char** argv) {
    if (argc != 4) die("usage: harness OP IN OUT");
    const std::string op = argv[1];
    FILE* in = std::fopen(argv[2], "rb");
    if (!in) die("cannot open input");
    char magic[4];
    read_exact(in, magic, 4);
    if (std::memcmp(magic, "SKRN", 4) != 0) die("bad magic");
    uint32_t np = 0;
    read_exact(in, &np, 4);
    std::vector<double> p(np);
    read_exact(in, p.data(), np * 8);
    uint32_t na = 0;
    read_exact(in, &na, 4);
    std::vector<Array> a(na);
    for (auto& x : a) {
        uint64_t len = 0;
        read_exact(in, &x.dtype, 4);
        read_exact(in, &len, 8);
        if (x.dtype > 2 || len > (1ull << 32)) die("bad array header");
        x.bytes.resize(len * x.elem());
        read_exact(in, x.bytes.data(), x.bytes.size());
    }
    std::fclose(in);
    auto need = [&](size_t params, size_t arrays) {
        if (p.size() != params || a.size() != arrays) die(op + ": wrong number of params or arrays");
    };
    auto F = [&](size_t i) { return static_cast<float*>(a[i].ptr()); };
    auto H = [&](size_t i) { return static_cast<f16bits*>(a[i].ptr()); };
    auto U = [&](size_t i) { return static_cast<unsigned*>(a[i].ptr()); };
    auto I = [&](size_t i) { return static_cast<int>(p[i]); };
    const unsigned grid = static_cast<unsigned>(p.at(0)), block = static_cast<unsigned>(p.at(1));

    if (op == "layer_norm") {
        need(5, 4);
        launch(grid, block, layer_norm_f32, F(0), F(1), F(2), F(3), I(2), I(3), (float)p[4]);
    } else if (op == "bias_act") {
        need(7, 3);  // src, bias, dst; params: rows cols gelu accumulate in_place
        float* src = I(6) ? F(2) : F(0);
        launch(grid, block, bias_act_f32, src, F(1), F(2), I(2), I(3), I(4), I(5));
    } else if (op == "embed") {
        need(8, 4);  // tokens emb pos out; params: n seq_len pos0 vocab n_pos d
        launch(grid, block, embed_f16, U(0), I(2), I(3), I(4), H(1), I(5), H(2), I(6), F(3), I(7));
    } else if (op == "add_rows") {
        need(5, 2);  // x table; params: rows d offset
        launch(grid, block, add_rows_f16, F(0), I(2), I(3), H(1), I(4));
    } else if (op == "softmax") {
        need(9, 3);  // scores probs slots; params: rows q_len kv_len heads head0 scale causal
        HeadSlots slots;
        if (a[2].bytes.size() != sizeof slots) die("softmax: slots must hold MAX_HEADS ints");
        std::memcpy(&slots, a[2].bytes.data(), sizeof slots);
        launch(grid, block, attn_softmax_f32, F(0), I(2), I(3), I(4), I(5), I(6), (float)p[7], I(8), F(1), slots);
    } else if (op == "im2col") {
        need(6, 2);  // x cols; params: t_in c_in stride t_out
        launch(grid, block, im2col_k3_f16, F(0), I(2), I(3), I(4), I(5), H(1));
    } else if (op == "f32_to_f16") {
        need(6, 2);  // src dst; params: src_stride src_col rows width
        launch(grid, block, f32_to_f16_2d, F(0), I(2), I(3), I(4), I(5), H(1));
    } else if (op == "f16_to_f32") {
        need(3, 2);  // src dst; params: n
        launch(grid, block, f16_to_f32_1d, H(0), F(1), I(2));
    } else if (op == "gather") {
        need(6, 4);  // src src_rows dst dst_rows; params: src_stride src_col n width
        launch(grid, block, gather_rows_f32, F(0), I(2), I(3), U(1), F(2), U(3), I(4), I(5));
    } else {
        die("unknown op " + op);
    }

    FILE* out = std::fopen(argv[3], "wb");
    if (!out) die("cannot open output");
    std::fwrite(&na, 4, 1, out);
    for (auto& x : a) {
        const uint64_t len = x.bytes.size() / x.elem();
        std::fwrite(&x.dtype, 4, 1, out);
        std::fwrite(&len, 8, 1, out);
        std::fwrite(x.bytes.data(), 1, x.bytes.size(), out);
    }
    return std::fclose(out) == 0 ? 0 : 2;
}
