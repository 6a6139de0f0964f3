// fake_module.h — how the fake CUDA device (fake_cuda.cpp) launches the
// kernels of one compiled "module" (force-included, after cuda_shim.h, into
// every kernel source its fake NVRTC compiles).
//
// `FAKE_KERNEL(name)` exports `fake_kernel_<name>`, a table the fake's
// cuModuleGetFunction looks up with dlsym. `bind` copies one launch's
// arguments out of cuLaunchKernel's `kernelParams` (each entry points at one
// argument, typed as the kernel declares it) and checks every pointer
// argument with the device's `check` callback; `run` executes the grid later
// (at once, or at the stream's synchronisation point); `drop` frees it.
#pragma once

#include <cstddef>
#include <tuple>
#include <type_traits>
#include <utility>

extern "C" {
// Says whether `ptr` (argument `arg` of `kernel`) may be dereferenced on the
// device: null, or inside a live allocation. Records a violation if not.
typedef int (*fake_check_fn)(const void* ptr, const char* kernel, int arg);

struct FakeKernel {
    const char* name;
    void* (*bind)(void** params, fake_check_fn check);
    void (*run)(void* bound, unsigned grid, unsigned block);
    void (*drop)(void* bound);
};
}

namespace fake_module {

template <class F>
struct Sig;
template <class... P>
struct Sig<void (*)(P...)> {
    using Args = std::tuple<std::decay_t<P>...>;
    static constexpr std::size_t N = sizeof...(P);
};

template <auto K>
struct Kernel {
    using S = Sig<decltype(K)>;
    using Args = typename S::Args;

    template <std::size_t... I>
    static Args* load(void** params, std::index_sequence<I...>) {
        return new Args(*static_cast<std::tuple_element_t<I, Args>*>(params[I])...);
    }

    template <std::size_t... I>
    static bool check_all(const Args& a, fake_check_fn check, const char* name, std::index_sequence<I...>) {
        bool ok = true;
        auto one = [&](auto v, int i) {
            if constexpr (std::is_pointer_v<decltype(v)>) ok &= check(static_cast<const void*>(v), name, i) != 0;
        };
        (one(std::get<I>(a), static_cast<int>(I)), ...);
        return ok;
    }

    static void* bind(void** params, fake_check_fn check, const char* name) {
        auto idx = std::make_index_sequence<S::N>{};
        Args* a = load(params, idx);
        if (!check_all(*a, check, name, idx)) {
            delete a;
            return nullptr;
        }
        return a;
    }

    template <std::size_t... I>
    static void run(Args& a, unsigned grid, unsigned block, std::index_sequence<I...>) {
        launch(grid, block, K, std::get<I>(a)...);
    }
};

}  // namespace fake_module

#define FAKE_KERNEL(k)                                                                                  \
    extern "C" const FakeKernel fake_kernel_##k = {                                                     \
        #k,                                                                                             \
        [](void** p, fake_check_fn c) -> void* { return fake_module::Kernel<&k>::bind(p, c, #k); },      \
        [](void* b, unsigned g, unsigned t) {                                                           \
            using K = fake_module::Kernel<&k>;                                                          \
            K::run(*static_cast<K::Args*>(b), g, t, std::make_index_sequence<K::S::N>{});               \
        },                                                                                              \
        [](void* b) { delete static_cast<fake_module::Kernel<&k>::Args*>(b); },                         \
    };
