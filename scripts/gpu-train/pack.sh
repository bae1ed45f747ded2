#!/usr/bin/env bash
# Prepares the GPU training job (README.md beside this file) in two halves that can travel
# together or in two calls to the same warm machine:
#   JOB_DIR/tools  the release `pipnet` with the wgpu feature (stripped, xz), the ImageNet
#                  weights, and the pinned Vulkan loader packages;
#   JOB_DIR/data   the config's training faces packed by `pipnet train --pack`, and train.toml.
#   scripts/gpu-train/pack.sh [JOB_DIR] [CONFIG] [-- extra `pipnet train --pack` options]
# Environment: PIPNET_BIN packs with that binary and ships none (the CPU dry run does);
# NO_DEBS=1 skips the loader packages (a CPU run needs none).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
job="${1:-$root/.gpu-job}"
config="${2:-$root/configs/face68-mbv2-256-gpu.toml}"
shift $(( $# < 2 ? $# : 2 ))
[ "${1:-}" = "--" ] && shift

if [ -n "${PIPNET_BIN:-}" ]; then
    bin="$PIPNET_BIN"
else
    (cd "$root" && cargo build --release -p pipnet-cli --features wgpu)
    bin="$root/target/release/pipnet"
fi
rm -rf "$job"
mkdir -p "$job/tools"
"$bin" train --config "$config" --pack "$job/data" "$@"
# The weights are a tool, not data: they travel with the binary.
if [ -f "$job/data/mobilenet_v2-b0353104.pth" ]; then
    mv "$job/data/mobilenet_v2-b0353104.pth" "$job/tools/"
fi
if [ -z "${PIPNET_BIN:-}" ]; then
    # Symbols and line tables are most of the binary; xz takes the rest to a fifth.
    strip -o "$job/tools/pipnet" "$bin"
    xz -9 -T0 "$job/tools/pipnet"
fi
if [ -z "${NO_DEBS:-}" ]; then
    # The device machine has a GPU driver with a Vulkan ICD but no loader: bring Debian's,
    # pinned by version and SHA-256 (debs.sha256), fetched through apt from the Debian mirror.
    mkdir -p "$job/tools/debs" /tmp/pipnet-apt/partial
    opts=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/pipnet-apt)
    apt-get "${opts[@]}" update -qq
    (cd "$job/tools/debs" && apt-get "${opts[@]}" download -qq $(awk '{split($2, p, "_"); printf "%s=%s ", p[1], p[2]}' "$here/debs.sha256"))
    (cd "$job/tools/debs" && sha256sum --quiet -c "$here/debs.sha256")
fi
for half in tools data; do
    du -sb "$job/$half" | awk -v h="$half" '{printf "%s: %.1f MiB\n", h, $1 / 1048576}'
done
echo "what travels to a lent machine in one call is at most 64 MiB, the repository's tracked files included"
