#!/bin/sh
# The benchmarks side by side, in one run (so their ratios hold on a loaded machine): simulator
# throughput, the exported policy's inference latency (ONNX and C), the trainer (time to 95 %
# success, when TRAIN_SECONDS is set), and the wall-clock checks of the test suite (the tests
# marked `timing`, deselected by default: setpoint-loss and telemetry-loss latencies, the MSP
# link's pacing, ...). Say what else was running when you quote the figures.
#
#   scripts/benchmarks.sh [OUT_DIR]                    # default: benchmarks/; about 2 minutes
#   TRAIN_SECONDS=60 scripts/benchmarks.sh             # also `bench train` for 60 s
#
# Writes OUT_DIR/{sim,policy,train}.json and OUT_DIR/timing.txt, and prints them; stops at the
# first benchmark that fails.
set -eu
OUT=${1:-benchmarks}
SKYLOOP=${SKYLOOP:-.venv/bin/skyloop}
PYTEST=${PYTEST:-.venv/bin/python -m pytest}
POLICY=${POLICY:-flight/policies/default.onnx}
mkdir -p "$OUT"
echo "== load before: $(cat /proc/loadavg 2>/dev/null || uptime)" >&2
echo "== bench sim" >&2
$SKYLOOP bench sim --drones 1 1024 8192 --no-tasks --json > "$OUT/sim.json"
cat "$OUT/sim.json"
echo "== bench policy $POLICY" >&2
$SKYLOOP bench policy "$POLICY" --json > "$OUT/policy.json"
cat "$OUT/policy.json"
if [ -n "${TRAIN_SECONDS:-}" ]; then
    echo "== bench train ($TRAIN_SECONDS s)" >&2
    $SKYLOOP bench train --seconds "$TRAIN_SECONDS" --json > "$OUT/train.json"
    cat "$OUT/train.json"
fi
echo "== the timing tests (pytest -m timing)" >&2
status=0
$PYTEST -q -m timing -p no:cacheprovider tests/ -s > "$OUT/timing.txt" 2>&1 || status=$?
tail -n 15 "$OUT/timing.txt"
echo "== load after: $(cat /proc/loadavg 2>/dev/null || uptime)" >&2
exit $status
