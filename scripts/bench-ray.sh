#!/bin/bash
# Throughput of the Ray path against `pipnet annotate` on the same photos and cores, interleaved:
#   scripts/bench-ray.sh PYTHON FOLDER...
# PYTHON has ray and the pipnet package (built with `maturin develop --release`); the CLI is
# target/release/pipnet. Prints annotate's summary line and the example's JSON line per run,
# then a table of photos and seconds per run. Given a small folder and a large one that holds
# it, the table's last column is each run's marginal rate against the same round's small run:
# (photos_large - photos_small) / (seconds_large - seconds_small), the throughput once the
# fixed costs (Ray's start, loading the models) are paid.
set -euo pipefail
python=$1; shift
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
runs=$out/runs.tsv
for round in 1 2; do
  for folder in "$@"; do
    rm -rf "$out/a"
    echo "round $round, $folder, pipnet annotate --threads 2:"
    line=$(target/release/pipnet annotate "$folder" --out "$out/a" --threads 2 2>&1 | tail -1)
    echo "$line"
    # "N images: ... in S.Ss (...)"
    photos=${line%% images:*}
    seconds=$(echo "$line" | sed -E 's/.* in ([0-9.]+)s .*/\1/')
    printf '%s\t%s\tannotate\t%s\t%s\n' "$round" "$folder" "$photos" "$seconds" >> "$runs"
    for layout in "2 1" "1 2"; do
      set -- $layout "$@"
      rm -rf "$out/r"
      echo "round $round, $folder, Ray $1 actors x $2 CPUs:"
      json=$("$python" examples/python/ray_annotate.py "$folder" "$out/r" --actors "$1" \
        --cpus-per-actor "$2" 2>/dev/null | tail -1)
      echo "$json"
      "$python" -c 'import json, sys; s = json.loads(sys.argv[4]); print(sys.argv[1], sys.argv[2], sys.argv[3], s["photos"], s["seconds"], sep="\t")' \
        "$round" "$folder" "ray-$1x$2" "$json" >> "$runs"
      shift 2
    done
  done
done
"$python" - "$runs" <<'EOF'
import sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1])]
small = {}
print(f"{'round':>5} {'folder':<40} {'run':<10} {'photos':>6} {'seconds':>8} {'photos/s':>8} {'marginal':>8}")
for round_, folder, run, photos, seconds in rows:
    photos, seconds = int(photos), float(seconds)
    base = small.get((round_, run))
    marginal = ""
    if base and photos > base[0] and seconds > base[1]:
        marginal = f"{(photos - base[0]) / (seconds - base[1]):.1f}"
    small.setdefault((round_, run), (photos, seconds))
    print(f"{round_:>5} {folder[-40:]:<40} {run:<10} {photos:>6} {seconds:>8.2f} {photos / seconds:>8.1f} {marginal:>8}")
EOF
