#!/bin/sh
# A stand calibration session on the simulated stand, end to end:
#   tare -> sweep -> steps -> calibrate -> the drone profile (and its report).
#
#   scripts/stand_session.sh [PROFILE] [OUT_DIR]      # defaults: fpv5, stand_session/
#
# PROFILE is the drone whose motor sits on the simulated stand and the base of the fitted
# profile. For a real stand, put its port in PORT (e.g. PORT=/dev/ttyUSB0,115200): the same
# procedures run on it (each asks nothing: --yes; only do that with the prop guarded).
# Takes about a minute (the procedures run in real time). Writes OUT_DIR/{tare,sweep,steps}.csv
# (with .json sidecars and .png pictures), OUT_DIR/profile.json and OUT_DIR/report/.
set -eu
PROFILE=${1:-fpv5}
OUT=${2:-stand_session}
SKYLOOP=${SKYLOOP:-.venv/bin/skyloop}
PORT=${PORT:-sim:$PROFILE}
mkdir -p "$OUT"
for procedure in tare sweep steps; do
    echo "== stand run $procedure on $PORT" >&2
    $SKYLOOP stand run "$procedure" --port "$PORT" --yes --motor "$PROFILE (simulated)" -o "$OUT/$procedure.csv"
done
echo "== calibrate $OUT/sweep.csv $OUT/steps.csv (base profile $PROFILE)" >&2
$SKYLOOP calibrate "$OUT/sweep.csv" "$OUT/steps.csv" --profile "$PROFILE" -o "$OUT/profile.json" \
    --report "$OUT/report"
echo "== the calibrated profile: $OUT/profile.json (fly it: fly --course hall --profile $OUT/profile.json)" >&2
