"""`skyloop compare LOG --profile P [--profile P2] -o report/`: did the drone do what the sim said?

Reads a real flight log (ours, PX4 .ulg, ArduPilot .bin, MAVLink .tlog, or any CSV with --mapping),
runs the model check, the open-loop replay and, for our own flights, the closed-loop replay, for
each profile, and prints the figures (--json: one JSON object, the same as metrics.json). With -o,
writes PNGs, metrics.json and report.html (self-contained) there. A log that is broken part way
is compared up to the break, the break is reported, and the exit status is 1.
"""
from __future__ import annotations

import json
import logging
import sys

log = logging.getLogger(__name__)


def add_arguments(parser) -> None:
    parser.add_argument("log", metavar="LOG", help="flight log: our CSV, .ulg, .bin, .tlog, or a CSV with --mapping")
    parser.add_argument("--profile", action="append", required=True,
                        help="drone profile (name or JSON); give it twice to compare two (e.g. calibrated vs default)")
    parser.add_argument("--mapping", default=None,
                        help="column mapping for a generic CSV (name in calibration/mappings/ or a path), "
                             "e.g. crazyflie_usd")
    parser.add_argument("-o", "--output", default=None, metavar="DIR",
                        help="write PNGs, metrics.json and report.html here")
    parser.add_argument("--json", action="store_true", help="print one JSON object of the figures (as metrics.json)")
    parser.add_argument("--mcap", default=None, metavar="FILE",
                        help="also write the flight, the sim replay and its errors as an MCAP file (Foxglove opens it; "
                             "calibration/mcap_export.py lists the channels)")
    parser.add_argument("--mass-kg", type=float, default=None,
                        help="the flight's take-off mass; unset: the log's metadata (a mapping's vehicle.mass_kg), "
                             "else each profile's")
    parser.add_argument("--policy", default=None,
                        help="the policy flown (closed loop); unset: the one the sidecar names")
    parser.add_argument("--every-s", type=float, default=0.5, help="open-loop replay: start a window this often")
    parser.add_argument("--smooth-s", type=float, default=0.02,
                        help="model check: Savitzky-Golay window on measured and predicted accelerations")
    parser.add_argument("--hover-window-s", type=float, nargs=2, default=None, metavar=("START", "LENGTH"),
                        help="hover closure over this stretch (s from the log's start); unset: the calmest second")
    parser.add_argument("--no-closed-loop", action="store_true", help="skip re-flying our own flights in the sim")
    parser.add_argument("--controller", choices=("imrclab", "bitcraze"), default=None,
                        help="also replay with the Crazyflie's Lee controller in the loop (its firmware's default "
                             "gains: the IMRCLab fork's or upstream Bitcraze's), flying the logged path: attitude "
                             "error at 0.1 / 0.5 / 1 / 2 s and the motor commands it needs vs the logged ones")


def _text(summary: dict) -> str:
    lines = [f"{summary['log']['file']}: {summary['log']['format']}, {summary['log']['samples']} samples, "
             f"{summary['log']['duration_s']:.1f} s, {summary['log']['segments']} segment(s)"]
    lines += [f"  log: {i}" for i in summary["log"]["issues"]]
    for name, m in summary["by_profile"].items():
        lines.append(f"{name}:")
        mc, hc, rp, cl = m.get("model_check"), m.get("hover_closure"), m.get("replay"), m.get("closed_loop")
        if mc:
            r2 = ", ".join(f"{a} {v:.3f}" if v is not None else f"{a} -" for a, v in mc["r2"].items())
            rmse = ", ".join(f"{a} {v:.3f}" for a, v in mc["rmse_m_s2"].items() if v is not None)
            lines.append(f"  model check (mass {mc['mass_kg']:.4g} kg): accel R² {r2}; RMSE [m/s²] {rmse}")
        if hc:
            lines.append(f"  hover closure {hc['closure']:.3f} ({hc['error_pct']:+.1f} %) over "
                         f"t = {hc['window_s'][0]:g}..{hc['window_s'][1]:g} s")
        for rp in (rp, m.get("replay_translational")):
            if rp:
                errs = ", ".join(f"{h} s: {v:.3f} m" for h, v in rp["error_m"].items() if v is not None)
                lines.append(f"  open-loop replay ({rp['command_source']}): median error {errs}")
        lr = m.get("replay_controller")
        if lr:
            att = ", ".join(f"{h} s: {v:.1f}°" for h, v in lr["attitude_error_deg"].items() if v is not None)
            lines.append(f"  replay with the Lee controller ({lr['gains']} gains): median attitude error {att}; "
                         f"command vs logged {100 * (lr['command_bias'].get('0.5') or 0):+.1f} %")
        if cl:
            lines.append(f"  closed loop: real {cl['real']['gates_passed']}/{cl['real']['gates_total']} gates, lap "
                         f"{cl['real']['lap_time_s']}; sim {cl['sim']['gates_passed']}/{cl['sim']['gates_total']}, lap "
                         f"{cl['sim']['lap_time_s']}; median path gap {cl['path_error_m']['median']}")
        for part, why in m.get("skipped", {}).items():
            lines.append(f"  {part} skipped: {why}")
    return "\n".join(lines)


def _controller_replay(gains: str | None):
    """--controller GAINS: the Crazyflie's Lee controller with those gains flies the sim along the log."""
    if not gains:
        return None
    from calibration.lee_replay import lee_replay
    return lambda traj, profile, mass_kg, every_s: lee_replay(traj, profile, mass_kg, gains, every_s)


def run(args) -> int:
    from sim.profiles import load_profile

    from calibration.compare import compare_flight
    from calibration.compare_report import write_report
    from calibration.flightlogs import FlightLogError, read_flight_log

    profiles = [load_profile(p) for p in args.profile]
    broken = None
    try:
        traj = read_flight_log(args.log, args.mapping)
    except FlightLogError as exc:
        if exc.partial is None:
            raise
        broken = str(exc)
        print(f"skyloop compare: error: {broken}\n  comparing the {exc.partial.n} samples read before the break",
              file=sys.stderr)
        traj = exc.partial

    def status(text):
        print(f"compare: {text} ...", file=sys.stderr, flush=True)
    results, summary = compare_flight(traj, profiles, mass_kg=args.mass_kg, policy_path=args.policy,
                                      every_s=args.every_s, smooth_s=args.smooth_s,
                                      hover_window_s=tuple(args.hover_window_s) if args.hover_window_s else None,
                                      closed=not args.no_closed_loop, controller_replay=_controller_replay(args.controller),
                                      status=status)
    summary["log"]["broken"] = broken
    if args.mcap:
        from calibration.mcap_export import write_mcap
        first = next(iter(results.values()))["series"]
        counts = write_mcap(traj, first.get("replay"), summary, args.mcap)
        log.info("wrote %s (%s)", args.mcap, ", ".join(f"{k}: {v}" for k, v in counts.items()))
    if args.output:
        for path in write_report(traj, results, summary, args.output):
            log.info("wrote %s", path)
    print(json.dumps(summary) if args.json else _text(summary))
    return 1 if broken else 0
