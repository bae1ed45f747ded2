#!/bin/bash
# Throughput of the Ray path against `pipnet annotate` on the same photos and cores, interleaved:
#   scripts/bench-ray.sh PYTHON FOLDER... 
# PYTHON has ray and the pipnet package (built with `maturin develop --release`); the CLI is
# target/release/pipnet. Prints annotate's summary line and the example's JSON line per run.
set -euo pipefail
python=$1; shift
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for round in 1 2; do
  for folder in "$@"; do
    rm -rf "$out/a"
    echo "round $round, $folder, pipnet annotate --threads 2:"
    target/release/pipnet annotate "$folder" --out "$out/a" --threads 2 2>&1 | tail -1
    for layout in "2 1" "1 2"; do
      set -- $layout "$@"
      rm -rf "$out/r"
      echo "round $round, $folder, Ray $1 actors x $2 CPUs:"
      "$python" examples/python/ray_annotate.py "$folder" "$out/r" --actors "$1" \
        --cpus-per-actor "$2" 2>/dev/null | tail -1
      shift 2
    done
  done
done
