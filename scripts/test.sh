#!/usr/bin/env bash
# scripts/test.sh — the project's one test command (also what CI runs).
#
#   bash scripts/test.sh [extra cargo test args...]
#
# 1. scripts/setup.sh --with-base --with-browser --with-systemd --with-haproxy --with-sdks
#    --no-run: installs what is missing (Chromium for the captions-page test,
#    systemd-analyze and HAProxy for the operations tests), fetches
#    models/tiny.en and models/base (checked by sha256), cargo build --release.
#    It also fetches NVRTC (PyPI) and Debian's libcuda1 into .cache/, which
#    this script puts on LD_LIBRARY_PATH for the CUDA tests that need no GPU.
# 2. cargo fmt --check and cargo clippy --all-targets -D warnings.
# 3. cargo test --release: every unit and integration test; the integration
#    tests run the real binary (CARGO_BIN_EXE_scribed) on real audio from
#    ../shared/audio.
# Exits non-zero when anything fails. Cargo's own "test result:" lines are
# printed as they come, then one total line.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

bash scripts/setup.sh --with-base --with-browser --with-systemd --with-haproxy --with-sdks --no-run
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

# CUDA checks without a GPU (see scripts/setup.sh): NVRTC for the kernel
# compile test, and Debian's libcuda1 for the "driver but no GPU" test. The
# loader reads LD_LIBRARY_PATH once, at process start, so it is set here.
# libcuda1 only where no real driver is installed: on a GPU machine it must
# not shadow the driver that matches the hardware.
cuda_path="$REPO/.cache/nvrtc/nvidia/cu13/lib"
if ! { command -v ldconfig >/dev/null 2>&1 && ldconfig -p | grep -q 'libcuda\.so\.1 '; }; then
    libcuda="$(find "$REPO/.cache/libcuda1" -name libcuda.so.1 2>/dev/null | head -1)"
    if [ -n "$libcuda" ]; then cuda_path="$cuda_path:$(dirname "$libcuda")"; fi
fi
export LD_LIBRARY_PATH="$cuda_path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# Style and lints first: cheap, and a red here means nothing else matters.
# (Debian's cargo package ships neither tool: then one line says so.)
if cargo fmt --version >/dev/null 2>&1; then
    echo "test: cargo fmt --check"
    cargo fmt --check
else
    echo "test: skipping the format check: rustfmt is not installed"
fi
if cargo clippy --version >/dev/null 2>&1; then
    echo "test: cargo clippy --release --all-targets -- -D warnings"
    cargo clippy --release --all-targets -- -D warnings
else
    echo "test: skipping the lint check: clippy is not installed"
fi

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
echo "test: cargo test --release $*"
set +e
cargo test --release "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e

# One total over all test binaries, from cargo's per-binary summary lines.
awk '/^test result:/ {
        for (i = 1; i <= NF; i++) {
            if ($(i) ~ /^passed/)  p += $(i-1)
            if ($(i) ~ /^failed/)  f += $(i-1)
            if ($(i) ~ /^ignored/) s += $(i-1)
        }
        n++
     }
     END { if (n) printf "total: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
if [ "$rc" -ne 0 ]; then
    echo "test: FAILED (cargo test exit $rc)" >&2
fi
exit "$rc"
