#!/usr/bin/env bash
# Packs the CUDA check (README.md beside this file) for a lent GPU machine that has the NVIDIA
# driver and PyTorch's CUDA 13 / cuDNN 9 wheels but no Rust, no network and no onnxruntime-gpu:
# the release `pipnet` (dist profile), ONNX Runtime's CPU build (for the CPU side of the
# comparison) and the CUDA build's libraries from the pinned `onnxruntime-gpu` wheel, laid out
# as pipnet's cache, in one xz stream cut into numbered parts that each fit one call.
#   scripts/gpu-cuda/pack.sh [JOB_DIR]            -> JOB_DIR (default .cuda-job)/00, 01, ...
# Environment: PIPNET_BIN packs that binary instead of building one; NO_GPU=1 packs no CUDA
# build (the CPU dry run of the tests); PART_MIB sets the part size (default 52).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
job="${1:-$root/.cuda-job}"
part_mib="${PART_MIB:-52}"
runtime_rs="$root/crates/pipnet-infer/src/runtime.rs"
# The pins live in the runtime's source: one place to change them.
cpu_version="$(sed -n 's/^pub const ORT_VERSION: &str = "\(.*\)";/\1/p' "$runtime_rs")"
gpu_version="$(sed -n 's/^pub const ORT_GPU_VERSION: &str = "\(.*\)";/\1/p' "$runtime_rs")"
gpu_sha256="$(grep -A1 "\"onnxruntime-gpu==$gpu_version\"" "$runtime_rs" | sed -n 's/.*"\([0-9a-f]\{64\}\)".*/\1/p')"
[ -n "$cpu_version" ] && [ -n "$gpu_version" ] && [ -n "$gpu_sha256" ] ||
    { echo "pack.sh: could not read the ONNX Runtime pins from $runtime_rs" >&2; exit 2; }

if [ -n "${PIPNET_BIN:-}" ]; then
    bin="$PIPNET_BIN"
else
    (cd "$root" && cargo build --profile dist -p pipnet-cli)
    bin="$root/target/dist/pipnet"
fi
rm -rf "$job"
bundle="$job/bundle"
mkdir -p "$bundle/bin" "$bundle/cache"
# Symbols and line tables are most of a release binary and nothing the check needs.
strip -o "$bundle/bin/pipnet" "$bin"
# The CPU build as pipnet caches it: this machine's cached copy, else fetched with pip.
cpu_lib="onnxruntime-$cpu_version/libonnxruntime.so.$cpu_version"
cache="${PIPNET_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pipnet}"
mkdir -p "$bundle/cache/$(dirname "$cpu_lib")"
if [ -f "$cache/$cpu_lib" ]; then
    cp "$cache/$cpu_lib" "$bundle/cache/$cpu_lib"
else
    env -u ORT_DYLIB_PATH PIPNET_CACHE_DIR="$bundle/cache" "$bin" info >/dev/null
fi
if [ -z "${NO_GPU:-}" ]; then
    wheels="$job/wheels"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        -d "$wheels" "onnxruntime-gpu==$gpu_version"
    wheel="$(ls "$wheels"/onnxruntime_gpu-*.whl)"
    echo "$gpu_sha256  $wheel" | sha256sum --quiet -c
    capi="$bundle/cache/onnxruntime-gpu-$gpu_version/onnxruntime/capi"
    mkdir -p "$capi"
    # The library and the providers it loads from beside itself (TensorRT's is not used).
    unzip -q -j -d "$capi" "$wheel" "onnxruntime/capi/libonnxruntime.so.$gpu_version" \
        onnxruntime/capi/libonnxruntime_providers_cuda.so \
        onnxruntime/capi/libonnxruntime_providers_shared.so
    rm -rf "$wheels"
fi
# XZ_OPT picks another level (the dry run of the tests takes -0: fast, larger parts).
tar -C "$bundle" -cf - . | XZ_OPT="${XZ_OPT:--6}" xz -T0 > "$job/bundle.tar.xz"
rm -rf "$bundle"
split -b "${part_mib}M" -d -a 2 "$job/bundle.tar.xz" "$job/part-"
parts=$(ls "$job"/part-* | wc -l)
sum="$(sha256sum "$job/bundle.tar.xz" | cut -d' ' -f1)"
rm "$job/bundle.tar.xz"
for part in "$job"/part-*; do
    n="${part##*-}"
    mkdir "$job/$n"
    mv "$part" "$job/$n/"
    printf 'parts %s\nsha256 %s\ncuda %s\n' "$parts" "$sum" "$([ -z "${NO_GPU:-}" ] && echo "$gpu_version" || echo none)" > "$job/$n/MANIFEST"
done
du -sb "$job"/[0-9]* | awk '{printf "%s: %.1f MiB\n", $2, $1 / 1048576}'
echo "$parts parts: carry one per call to the same warm machine (README.md beside this script)"
