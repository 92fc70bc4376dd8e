#!/usr/bin/env bash
# Run every benchmark with its default workloads and write the figures into benchmarks/RESULTS.md.
#
#   benchmarks/run_all.sh                  # CPU, float32, one thread (about 2 hours on a 2-core machine)
#   benchmarks/run_all.sh cuda float16     # a GPU: the issue's full matrix, glm-10b included
#
# Timings are only comparable within one run: check `uptime` first and run on a quiet machine.
set -euo pipefail
device="${1:-cpu}"
dtype="${2:-}"
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
python="${PYTHON:-python}"
flags=(--device "$device")
if [[ -n "$dtype" ]]; then flags+=(--dtype "$dtype"); fi

"$python" benchmarks/bench_decode.py "${flags[@]}" --output benchmarks/RESULTS.md
"$python" benchmarks/bench_infill.py "${flags[@]}" --output benchmarks/RESULTS.md
if [[ "$device" == "cpu" ]]; then
    "$python" benchmarks/bench_convert.py --size-gb 0.5 2 --output benchmarks/RESULTS.md
fi
