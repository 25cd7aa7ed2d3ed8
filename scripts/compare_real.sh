#!/bin/sh
# Sim vs real on a real flight log: a Crazyflie 2.1 figure-8 (500 Hz onboard log, RPM deck,
# motion capture) replayed open loop in the sim with the crazyflie21 profile; the report says
# where the sim and the real drone part (position, attitude, rates, rotor speeds, per window).
#
#   scripts/compare_real.sh [LOG] [MAPPING] [PROFILE] [OUT_DIR]
#   defaults: ../shared/data/real/cf21_brushed_jana00_fixedFrequency.csv crazyflie_usd crazyflie21 compare_real/
#   scripts/compare_real.sh log.ulg "" my_quad.json out/   # a PX4 ULog (no mapping); .bin / .tlog likewise
#
# A few seconds. Writes OUT_DIR/report.html and OUT_DIR/metrics.json; prints the figures as JSON.
set -eu
LOG=${1:-../shared/data/real/cf21_brushed_jana00_fixedFrequency.csv}
MAPPING=${2-crazyflie_usd}
PROFILE=${3:-crazyflie21}
OUT=${4:-compare_real}
SKYLOOP=${SKYLOOP:-.venv/bin/skyloop}
if [ ! -e "$LOG" ]; then
    echo "compare_real: $LOG not found (the shared real data set lives beside the repository)" >&2
    exit 1
fi
if [ -n "$MAPPING" ]; then
    $SKYLOOP compare "$LOG" --mapping "$MAPPING" --profile "$PROFILE" -o "$OUT" --json
else
    $SKYLOOP compare "$LOG" --profile "$PROFILE" -o "$OUT" --json
fi
