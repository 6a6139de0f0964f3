#!/usr/bin/env bash
# build.sh DIR — builds the fake CUDA device (fake_cuda.cpp) into DIR:
# libcuda.so (all of it), and libnvrtc.so, libcublas.so, libcublasLt.so,
# empty libraries that depend on it, so that a dlopen of any of the four
# names, and a dlsym in it, finds the one fake. Needs g++ (C++20).
set -euo pipefail
out=${1:?usage: build.sh DIR}
here=$(cd "$(dirname "$0")" && pwd)
kernels=$(cd "$here/../../kernels" && pwd)
mkdir -p "$out"
g++ -std=c++20 -O2 -g -fPIC -shared -Wall -Wextra -Werror -pthread \
    -DFAKE_CUDA_KERNELS_DIR="\"$kernels\"" -DFAKE_CUDA_SRC_DIR="\"$here\"" \
    "$here/fake_cuda.cpp" -Wl,-soname,libcuda.so -o "$out/libcuda.so.tmp" -ldl
mv "$out/libcuda.so.tmp" "$out/libcuda.so"
for name in nvrtc cublas cublasLt; do
    echo "" | g++ -shared -fPIC -x c++ - -o "$out/lib$name.so" -Wl,-soname,lib$name.so \
        -x none -Wl,--no-as-needed "$out/libcuda.so" -Wl,-rpath,'$ORIGIN'
done
