#!/usr/bin/env bash
# Runs on the lent GPU machine from the repository copy: stages the parts of the CUDA check
# (pack.sh) this call carried into STAGE; once all are there, unpacks pipnet and its ONNX
# Runtime cache, points the CUDA build at the machine's own NVIDIA wheels (PyTorch's CUDA 13
# and cuDNN 9), and checks and measures `--device cuda` against the CPU, results in OUT:
#   info-cuda.txt        `pipnet info --device cuda`: the provider that ran
#   annotate-<d>.jsonl   the sample photos annotated on each device, one line per photo
#   compare.txt          faces found on each, and the largest landmark difference (pixels)
#   bench-<d>.json       `pipnet bench` on each device (per-stage times, faces/s)
#   report.txt           the above in a few lines
# With DEVICE=cpu only the CPU side runs: the dry run the tests make of the same job.
#   OUT=... [JOB=.cuda-job] [STAGE=/tmp/pipnet-cuda-job] [DEVICE=cuda] [REPEAT=5]
#   bash scripts/gpu-cuda/device.sh
set -euo pipefail
job="${JOB:-.cuda-job}"
stage="${STAGE:-/tmp/pipnet-cuda-job}"
out="${OUT:?OUT must name the folder the results go to}"
device="${DEVICE:-cuda}"
mkdir -p "$out" "$stage/parts"
for dir in "$job"/[0-9][0-9]; do
    [ -d "$dir" ] || continue
    cp "$dir"/part-* "$dir/MANIFEST" "$stage/parts/"
    echo "staged $(basename "$dir"/part-*)"
done
[ -f "$stage/parts/MANIFEST" ] || { echo "nothing staged: carry a part of $job" >&2; exit 2; }
parts="$(awk '$1 == "parts" {print $2}' "$stage/parts/MANIFEST")"
sum="$(awk '$1 == "sha256" {print $2}' "$stage/parts/MANIFEST")"
cuda="$(awk '$1 == "cuda" {print $2}' "$stage/parts/MANIFEST")"
have=$(ls "$stage"/parts/part-* | wc -l)
if [ "$have" -lt "$parts" ]; then
    echo "$have of $parts parts staged: carry the others in the next calls, while this machine is warm"
    exit 0
fi
if [ ! -x "$stage/bundle/bin/pipnet" ]; then
    echo "$sum  -" > "$stage/bundle.sha256"
    cat "$stage"/parts/part-* | sha256sum --quiet -c "$stage/bundle.sha256" ||
        { echo "the staged parts do not add up to the packed bundle: pack and stage them again" >&2; exit 2; }
    rm -rf "$stage/bundle.tmp"
    mkdir -p "$stage/bundle.tmp"
    cat "$stage"/parts/part-* | xz -dc | tar -C "$stage/bundle.tmp" -xf -
    mv "$stage/bundle.tmp" "$stage/bundle"
fi
bin="$stage/bundle/bin/pipnet"
export PIPNET_CACHE_DIR="$stage/bundle/cache" PIPNET_OFFLINE=1
unset ORT_DYLIB_PATH
devices=(cpu)
if [ "$device" = cuda ]; then
    [ "$cuda" != none ] || { echo "this pack holds no CUDA build (NO_GPU)" >&2; exit 2; }
    # The CUDA build loads the NVIDIA libraries from nvidia/ beside onnxruntime/, as pip lays
    # them out: take the machine's own (PyTorch's wheels).
    nvidia="$(python3 -c 'import nvidia, os; print(list(nvidia.__path__)[0])')"
    ln -sfn "$nvidia" "$PIPNET_CACHE_DIR/onnxruntime-gpu-$cuda/nvidia"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt" || true
    "$bin" info --device cuda > "$out/info-cuda.txt" 2>&1 || { cat "$out/info-cuda.txt"; exit 1; }
    devices+=(cuda)
fi
status=0
for d in "${devices[@]}"; do
    rm -rf "$stage/annotate-$d"
    "$bin" annotate examples/photos --device "$d" --out "$stage/annotate-$d" --format json \
        2> "$out/annotate-$d.log" || status=1
    for f in "$stage/annotate-$d"/*.json; do tr -d '\n' < "$f"; echo; done > "$out/annotate-$d.jsonl"
    "$bin" bench --device "$d" --no-python --repeat "${REPEAT:-5}" --video-frames 0 --json \
        > "$out/bench-$d.json" 2> "$out/bench-$d.log" || status=1
done
python3 - "$out" "${devices[@]}" <<'PY' || status=1
import json, sys
out, devices = sys.argv[1], sys.argv[2:]
def read(d):
    photos = [json.loads(line) for line in open(f"{out}/annotate-{d}.jsonl") if line.strip()]
    return {p["image"]: p["faces"] for p in photos}
ref = read("cpu")
lines = [f"cpu: {sum(map(len, ref.values()))} faces in {len(ref)} photos"]
ok = True
for d in devices[1:]:
    got = read(d)
    worst, faces = 0.0, 0
    for image, faces_cpu in ref.items():
        faces_d = got.get(image, [])
        if len(faces_d) != len(faces_cpu):
            ok = False
            lines.append(f"{image}: {len(faces_cpu)} faces on the cpu, {len(faces_d)} on {d}")
            continue
        for a, b in zip(faces_cpu, faces_d):
            faces += 1
            for p, q in zip(a["landmarks"], b["landmarks"]):
                worst = max(worst, abs(p[0] - q[0]), abs(p[1] - q[1]))
    lines.append(f"{d}: {faces} faces matched, largest landmark difference {worst:.3f} px")
    ok = ok and worst < 0.5
for d in devices:
    bench = json.load(open(f"{out}/bench-{d}.json"))
    stages = ", ".join(f"{s['name']} {s['median_ms']:.2f} ms" for s in bench["stages"])
    lines.append(
        f"bench {d} ({bench['device']}): {bench['crops_faces_per_second']:.1f} faces/s on known "
        f"crops, end to end / bare ORT run {bench['e2e_over_bare_ort']:.2f}; medians: {stages}"
    )
open(f"{out}/compare.txt", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
sys.exit(0 if ok else 1)
PY
{ cat "$out/gpu.txt" 2>/dev/null; head -5 "$out/info-cuda.txt" 2>/dev/null; cat "$out/compare.txt"; } > "$out/report.txt" || true
exit "$status"
