#!/bin/bash
# Photos/s over dlib's for several pipnet configurations, run in turn round after round so
# that they see the same machine, then the median and range of each over the rounds:
#   scripts/bench-vs-dlib.sh ROUNDS "LABEL|BINARY|ARGS[|DIR]" ... -- COMMON_ARGS
# e.g. scripts/bench-vs-dlib.sh 3 "default|target/release/pipnet|" \
#        "one pass|target/release/pipnet|--no-refine" -- --images examples/photos
# Each run is `BINARY bench --peer dlib --no-python --video-frames 0 --threads 2 --repeat 3
# --json ARGS COMMON_ARGS` with PIPNET_PYTHON (default target/test-python/bin/python); its
# ratio is the one that run reports (the median of its interleaved rounds for binaries that
# interleave, else its median over dlib's). DIR (default: here) is the checkout a binary runs
# in, for its own `python-export` (an older binary with its own dlib protocol): give BINARY
# and PIPNET_PYTHON as absolute paths then. Prints a line per run, then the summary table.
set -euo pipefail
rounds=$1; shift
configs=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do configs+=("$1"); shift; done
[ $# -gt 0 ] && shift
export PIPNET_PYTHON=${PIPNET_PYTHON:-target/test-python/bin/python}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for round in $(seq "$rounds"); do
  for config in "${configs[@]}"; do
    IFS='|' read -r label binary extra dir <<< "$config"
    # shellcheck disable=SC2086 # ARGS are words on purpose
    (cd "${dir:-.}" && "$binary" bench --peer dlib --no-python --video-frames 0 --threads 2 \
      --repeat 3 --json $extra "$@") > "$out/run.json"
    python3 - "$round" "$label" "$out/run.json" "$out/runs.tsv" <<'EOF'
import json, sys
round_, label, path, table = sys.argv[1:]
peer = json.load(open(path))["peer"]
ratio = peer["photos_per_s_over_dlib"]
low, high = peer.get("photos_per_s_over_dlib_range", [None, None])
load = peer.get("load")
notes = f"; its rounds {low:.2f}-{high:.2f}x" if low is not None else ""
if load:
    notes += (f"; load average {load['load_average_before']:.2f} before, "
              f"{100 * load['steal_share']:.1f}% stolen")
print(f"round {round_}: {label:<28} {ratio:.2f}x (ours {peer['ours']['photos_per_second']:.2f}, "
      f"dlib {peer['dlib']['photos_per_second']:.2f} photos/s; {peer['ours']['faces']} faces{notes})")
with open(table, "a") as f:
    print(label, ratio, sep="\t", file=f)
EOF
  done
done
python3 - "$out/runs.tsv" <<'EOF'
import statistics, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1])]
print(f"\n{'configuration':<28} {'median':>7} {'range':>12}  runs")
for label in dict.fromkeys(r[0] for r in rows):
    ratios = [float(r[1]) for r in rows if r[0] == label]
    print(f"{label:<28} {statistics.median(ratios):>6.2f}x {min(ratios):>5.2f}-{max(ratios):.2f}x  "
          + ", ".join(f"{r:.2f}" for r in ratios))
EOF
