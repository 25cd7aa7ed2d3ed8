"""`skyloop calibrate STAND_LOG... --profile BASE -o mydrone.json`: fit motor constants into a profile.

Accepts our stand logs, Tyto/RCbenchmark CSV exports and the Bitcraze-style CSV (detected from
the header). Prints a summary (or, with --json, one JSON object of the figures); --report DIR
adds a PNG of every fit with its residuals, the summary and the figures as files.
"""
from __future__ import annotations

import json
import logging
import os

from calibration.data import ESC_RANGE_US, MIN_STEP, CalibrationError

log = logging.getLogger(__name__)


def add_arguments(parser) -> None:
    parser.add_argument("logs", nargs="*", metavar="STAND_LOG",
                        help="stand logs (our CSV, a Tyto/RCbenchmark export, or a Bitcraze stand CSV)")
    parser.add_argument("--flight", metavar="LOG", default=None,
                        help="identify from a flight log with IMU and motor commands instead (thrust curve, motor "
                             "lag and delay, inertia, km): a CSV with --mapping, or .ulg/.bin/.tlog")
    parser.add_argument("--mapping", default=None,
                        help="column mapping of --flight / --test-flight CSVs (e.g. crazyflie_sysid)")
    parser.add_argument("--test-flight", metavar="LOG", default=None,
                        help="cross-validate the --flight identification on this other flight")
    parser.add_argument("--profile", required=True,
                        help="base drone profile (built-in name or path); every number not fitted comes from it")
    parser.add_argument("-o", "--output", default=None,
                        help="where to write the calibrated profile; unset: <base profile>_calibrated.json here")
    parser.add_argument("--name", default=None, help="the new profile's name; unset: the output file's name")
    parser.add_argument("--json", action="store_true", help="print one JSON object of the fitted figures")
    parser.add_argument("--report", metavar="DIR", default=None,
                        help="write calibration.png (data, fit, residuals), summary.txt and calibration.json here")
    parser.add_argument("--mass-kg", type=float, default=None, help="the drone's take-off mass; unset: the base profile's")
    parser.add_argument("--battery-v-nominal", type=float, default=None,
                        help="voltage the throttle curve is normalised to; unset: the logs' sidecar, else the "
                             "base profile's, else a LiPo cell count guessed from the logs' voltages")
    parser.add_argument("--esc-range-us", type=float, nargs=2, default=list(ESC_RANGE_US), metavar=("LOW", "HIGH"),
                        help="ESC pulse widths of throttle 0 and 1, for logs with esc_us and no throttle")
    parser.add_argument("--rpm-columns", default=None, metavar="COLS",
                        help="Bitcraze stand CSV: the rpm columns to trust, comma-separated (e.g. rpm4); default all")
    parser.add_argument("--min-step", type=float, default=MIN_STEP,
                        help="smallest throttle jump (0..1) that counts as a step for the time constants")
    hover = parser.add_mutually_exclusive_group()
    hover.add_argument("--hover-rpm", default=None,
                       help="hover closure at these rotor speeds: one RPM for all motors or four, comma-separated")
    hover.add_argument("--hover-log", default=None,
                       help="hover closure from a flight log with per-motor rpm columns (e.g. rpm.m1..rpm.m4)")
    parser.add_argument("--hover-window-s", type=float, nargs=2, default=[0.0, 1.0], metavar=("START", "LENGTH"),
                        help="where in --hover-log the drone hovers, seconds from its first row")


def _hover(args, cal) -> dict | None:
    from calibration.hover import hover_closure, read_hover_rpm
    if args.hover_rpm is None and args.hover_log is None:
        return None
    kf = cal.profile["params"]["kf_n_per_rad2s2"]
    mass = cal.profile["params"]["mass_kg"]
    if args.hover_log:
        start, length = args.hover_window_s
        read = read_hover_rpm(args.hover_log, window_s=length, start_s=start)
        closure = hover_closure(kf, read["rpm"], mass)
        closure.update(log=read["file"], rows_used=read["rows_used"], rows_rejected=read["rows_rejected"],
                       window_s=read["window_s"])
        return closure
    try:
        rpm = [float(v) for v in args.hover_rpm.split(",")]
    except ValueError:
        raise CalibrationError(f"--hover-rpm {args.hover_rpm!r}: give one number or four, comma-separated") from None
    return hover_closure(kf, rpm, mass)


def run_flight(args, base, output: str, name: str) -> int:
    from calibration.flightid import calibrate_flight
    from calibration.report import flight_summary_text

    if args.logs:
        raise CalibrationError("give stand logs or --flight, not both (calibrate the stand first, then pass its "
                               "profile as --profile to the flight identification)")
    out = calibrate_flight(args.flight, base, mapping=args.mapping, name=name, mass_kg=args.mass_kg,
                           test_flight=args.test_flight)
    if args.report:
        os.makedirs(args.report, exist_ok=True)
        with open(os.path.join(args.report, "flight_identification.json"), "w", encoding="utf-8") as f:
            json.dump(out["profile"]["calibration"], f, indent=2, default=str)
    if out["problems"]:
        raise CalibrationError("the identified profile would not run in the sim, so it was not written: "
                               + "; ".join(out["problems"]))
    _write(output, out["profile"])
    if args.json:
        ident = out["identification"]
        print(json.dumps({"profile": output, **{k: f.value for k, f in ident.fits.items()},
                          "ci95": {k: f.ci95 for k, f in ident.fits.items()}, "not_fitted": ident.not_fitted,
                          "skipped_rows": ident.skipped, "figures": ident.figures,
                          "cross_validation": out["cross_validation"]}, default=str))
    else:
        print(flight_summary_text(out, output))
    return 0


def _write(output: str, profile: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w", encoding="utf-8") as f:
        json.dump(profile, f, indent=2)
        f.write("\n")


def run(args) -> int:
    from sim.profiles import load_profile

    from calibration.calibrate import calibrate
    from calibration.report import summary_text, write_report

    base = load_profile(args.profile)
    output = args.output or f"{base.name}_calibrated.json"
    name = args.name or os.path.splitext(os.path.basename(output))[0]
    if args.flight:
        return run_flight(args, base, output, name)
    if not args.logs:
        raise CalibrationError("no stand logs given (or --flight LOG for a flight identification)")
    cal = calibrate(args.logs, base, name=name, mass_kg=args.mass_kg, battery_v_nominal=args.battery_v_nominal,
                    esc_range_us=tuple(args.esc_range_us), min_step=args.min_step,
                    rpm_columns=tuple(c.strip() for c in args.rpm_columns.split(",")) if args.rpm_columns else None)
    cal.hover = _hover(args, cal)
    if args.report:
        for path in write_report(cal, args.report, None if cal.problems else output):
            log.info("wrote %s", path)
    if cal.problems:
        raise CalibrationError("the calibrated profile would not run in the sim, so it was not written: "
                               + "; ".join(cal.problems))
    _write(output, cal.profile)
    if args.json:
        print(json.dumps({"profile": output, **cal.summary()}))
    else:
        print(summary_text(cal, output))
    return 0
