#!/usr/bin/env bash
# Runs on the lent GPU machine from the repository copy: stages whichever halves of the job
# (pack.sh) this call carried into STAGE, and once both are there trains the packed config
# through Vulkan for at most MINUTES, leaving the graph, metrics.csv and the log in OUT. A job
# too large for one call travels in two calls to the same warm machine: the first only stages.
# With DEVICE=flex it is the CPU dry run the tests make of the same job.
#   OUT=... [JOB=.gpu-job] [STAGE=/tmp/pipnet-gpu-job] [MINUTES=8] [DEVICE=wgpu] [EPOCHS=N]
#   [PIPNET_BIN=...] bash scripts/gpu-train/device.sh
set -euo pipefail
job="${JOB:-.gpu-job}"
stage="${STAGE:-/tmp/pipnet-gpu-job}"
out="${OUT:?OUT must name the folder the results go to}"
device="${DEVICE:-wgpu}"
mkdir -p "$out" "$stage"
for half in tools data; do
    if [ -d "$job/$half" ]; then
        rm -rf "${stage:?}/$half"
        cp -r "$job/$half" "$stage/$half"
        echo "staged $half"
    fi
done
for half in tools data; do
    if [ ! -d "$stage/$half" ]; then
        echo "no $half staged yet: carry $job/$half in the next call, while this machine is warm"
        exit 0
    fi
done

if [ "$device" = wgpu ]; then
    if [ -d "$stage/tools/debs" ]; then
        for f in "$stage"/tools/debs/*.deb; do dpkg -x "$f" /; done
        ldconfig
    fi
    icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$icd" ]; then
        export VK_DRIVER_FILES="$icd"
    fi
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
fi
bin="${PIPNET_BIN:-}"
if [ -z "$bin" ]; then
    bin="$stage/pipnet"
    [ -x "$bin" ] || { xz -dc "$stage/tools/pipnet.xz" > "$bin.tmp" && chmod +x "$bin.tmp" && mv "$bin.tmp" "$bin"; }
fi
if [ -f "$stage/tools/mobilenet_v2-b0353104.pth" ]; then
    export PIPNET_MOBILENET_V2_WEIGHTS="$stage/tools/mobilenet_v2-b0353104.pth"
fi
args=(train --config "$stage/data/train.toml" --device "$device" --max-minutes "${MINUTES:-8}")
[ -n "${EPOCHS:-}" ] && args+=(--epochs "$EPOCHS")
start=$(date +%s)
status=0
"$bin" "${args[@]}" 2>&1 | tee "$out/train.log" || status=$?
echo "training took $(( $(date +%s) - start )) s (exit $status)" | tee -a "$out/train.log"
run="$stage/data/run"
# A returned file may be at most 16 MiB: the 256x256 MobileNetV2 graph is just over, so it
# comes back gzipped.
if [ -f "$run/last.onnx" ]; then
    gzip -9 -c "$run/last.onnx" > "$out/last.onnx.gz"
fi
for f in metrics.csv config.toml; do
    if [ -f "$run/$f" ]; then cp "$run/$f" "$out/"; fi
done
exit "$status"
