#!/usr/bin/env bash
# fake-gpu.sh DIR — builds the fake CUDA device (tests/fake_cuda) into DIR
# and says how to run the daemon on it: the CUDA backend, unchanged, on the
# CPU, with every CUDA rule checked (see tests/fake_cuda/fake_cuda.cpp).
# Slow (kernels run as fibers, GEMMs as plain loops): for trying the GPU
# path without a GPU, not for speed.
set -euo pipefail
dir=${1:?usage: scripts/fake-gpu.sh DIR}
repo=$(cd "$(dirname "$0")/.." && pwd)
bash "$repo/tests/fake_cuda/build.sh" "$dir"
dir=$(cd "$dir" && pwd)
cat <<EOT
The fake CUDA device is in $dir. Run the daemon on it with:

  LD_LIBRARY_PATH=$dir SCRIBED_FAKE_CUDA_REPORT=/tmp/fake-cuda.json \\
    scribed serve --device cuda --max-sessions 2 --model models/tiny.en

Settings: SCRIBED_FAKE_CUDA_MODE=deferred|enqueue (when each stream's work
runs: at its synchronisation point, the default, or at once),
SCRIBED_FAKE_CUDA_MEM=BYTES (device memory, default 16 GiB). The report
(JSON, written when the daemon exits) counts allocations, launches, GEMMs,
and lists every violation of CUDA's rules.
EOT
