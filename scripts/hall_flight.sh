#!/bin/sh
# The hall course on the simulated vehicle, end to end: the shipped policy flies the built-in
# `hall` course (7 gates) on the simulated ArduPilot-like vehicle over loopback MAVLink, the
# flight's picture is drawn, and the flight is replayed in the sim (sim vs our own flight).
#
#   scripts/hall_flight.sh [OUT_DIR] [fly options...]  # default OUT_DIR: hall_flight/
#   scripts/hall_flight.sh out --autopilot px4 --mode motor
#
# About a minute (the flight runs in real time). Writes OUT_DIR/hall-*.csv (+ .json, .tlog, .png)
# and OUT_DIR/compare/ (report.html, metrics.json). Exit status: fly's (0 completed, 3 failsafe).
set -eu
OUT=${1:-hall_flight}
[ $# -gt 0 ] && shift
FLY=${FLY:-.venv/bin/fly}
SKYLOOP=${SKYLOOP:-.venv/bin/skyloop}
mkdir -p "$OUT"
status=0
$FLY --course hall --log "$OUT" --json "$@" > "$OUT/summary.json" || status=$?
cat "$OUT/summary.json"
LOG=$(ls -t "$OUT"/hall-*.csv | head -n 1)
echo "== compare $LOG with the sim" >&2
$SKYLOOP compare "$LOG" --profile crazyflie21 -o "$OUT/compare"
exit $status
