"""`skyloop stand`: drive a motor on a thrust stand and record it.

    skyloop stand sim [--profile fpv5]                        a simulated stand on a pty (prints its path)
    skyloop stand run sweep --port /dev/ttyUSB0,115200        a procedure (sweep, steps, endurance, tare,
                                                              or a plan file): log + sidecar + PNG
    skyloop stand run steps --port sim --yes                  ... on a simulated stand started for the run
    skyloop stand plan sweep > my_sweep.json                  a plan to copy and edit
    skyloop stand import EXPORT.csv -o stand_log.csv          a Tyto/RCbenchmark export in our format
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time

from skyloop.inputs import finite_arg
from thrust_stand.protocol import WATCHDOG_S

log = logging.getLogger(__name__)


class NotConfirmed(ValueError):
    """The user did not confirm spinning the motor."""


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,sim,plan,import}")
    fmt = parser.formatter_class

    run = sub.add_parser("run", formatter_class=fmt, help="run a procedure plan on a stand and record it",
                         description="Run a procedure on a stand: every sample flushed to the CSV as it arrives, "
                                     "a JSON sidecar, a live status line and a PNG at the end. Throttle 0 on "
                                     "Ctrl-C, on any error, and when samples stop for more than "
                                     f"{WATCHDOG_S * 1000:.0f} ms.")
    run.add_argument("procedure", help="sweep, steps, endurance, tare, or the path of a plan JSON file")
    run.add_argument("--port", required=True,
                     help="DEVICE[,BAUD] of a stand speaking PROTOCOL.md (e.g. /dev/ttyUSB0,115200); "
                          "mavlink:CONNECTION for a flight controller (e.g. mavlink:udpin:0.0.0.0:14550); "
                          "sim or sim:PROFILE for a simulated stand started for this run")
    run.add_argument("--load-cell", default=None, help="DEVICE[,BAUD] of the serial load cell (mavlink ports only)")
    run.add_argument("--motor-index", type=finite_arg(1, 16, integer=True), default=1,
                     help="flight controller output of the motor (mavlink)")
    run.add_argument("-o", "--output", default=None,
                     help="stand log CSV (sidecar .json and .png next to it); unset: stand_logs/PROCEDURE_TIME.csv")
    run.add_argument("--max-throttle", type=finite_arg(0.0, 1.0, lo_open=True), default=None,
                     help="throttle limit in (0, 1]; unset: the plan's")
    run.add_argument("--max-current-a", type=finite_arg(0.0, 1000.0, lo_open=True), default=None,
                     help="current limit [A]; unset: the plan's")
    run.add_argument("--max-thrust-n", type=finite_arg(0.0, 10000.0, lo_open=True), default=None,
                     help="thrust limit [N]; unset: the plan's")
    run.add_argument("--yes", action="store_true", help="do not ask for confirmation before spinning the motor")
    for name in ("motor", "prop", "battery", "esc", "stand", "notes"):
        run.add_argument(f"--{name}", default=None, help=f"{name} description for the sidecar")
    run.add_argument("--no-png", action="store_true", help="skip the picture of the run")
    run.add_argument("--json", action="store_true", help="print one JSON object describing the run")

    sim = sub.add_parser("sim", formatter_class=fmt, help="start a simulated stand on a pseudo-terminal",
                         description="A simulated stand speaking PROTOCOL.md on a pseudo-terminal, backed by the "
                                     "sim's motor model. Prints the device path; runs until Ctrl-C.")
    sim.add_argument("--profile", default="fpv5", help="drone profile whose motor is on the stand")
    sim.add_argument("--seed", type=int, default=0, help="noise seed")
    sim.add_argument("--seconds", type=finite_arg(0.0, lo_open=True), default=None,
                     help="stop after this long; unset: until Ctrl-C")

    plan = sub.add_parser("plan", formatter_class=fmt, help="print a procedure plan (to copy and edit)")
    plan.add_argument("procedure", help="sweep, steps, endurance or tare")

    imp = sub.add_parser("import", formatter_class=fmt, help="convert a Tyto/RCbenchmark CSV export",
                         description="Convert a Tyto Robotics / RCbenchmark CSV export (units from its header) "
                                     "into the Skyloop stand log format in SI.")
    imp.add_argument("export", help="the exported CSV")
    imp.add_argument("-o", "--output", required=True, help="stand log CSV to write (sidecar .json next to it)")


def run(args) -> int:
    return {"run": _run, "sim": _sim, "plan": _plan, "import": _import}[args.command](args)


def _confirm(plan, port: str, assume_yes: bool) -> None:
    if not plan.spins or assume_yes:
        return
    if not sys.stdin.isatty():
        raise NotConfirmed("this plan spins the motor and stdin is not a terminal to confirm on; "
                           "pass --yes once the prop is clear and the stand is secured")
    answer = input(f"About to spin the motor on {port}: {plan.summary()}.\n"
                   "Prop clear, stand clamped, people away? Type 'yes' to start: ")
    if answer.strip().lower() != "yes":
        raise NotConfirmed("not confirmed; nothing was sent to the motor")


def _run(args) -> int:
    from thrust_stand.stands import open_stand
    from thrust_stand.plans import load_plan
    from thrust_stand.run import RunAborted, default_log_path, run_plan

    # limits are checked here, before the stand is opened: a throttle above them is never sent
    plan = load_plan(args.procedure).with_limits(max_throttle=args.max_throttle, max_current_a=args.max_current_a,
                                                 max_thrust_n=args.max_thrust_n)
    _confirm(plan, args.port, args.yes)
    output = args.output or default_log_path(plan.procedure)
    meta = {name: getattr(args, name) for name in ("motor", "prop", "battery", "esc", "stand", "notes")
            if getattr(args, name)}
    simulated = None
    port = args.port
    if port == "sim" or port.startswith("sim:"):
        from thrust_stand.simstand import SimulatedStand
        simulated = SimulatedStand(port[4:] or "fpv5").start()
        port = simulated.port
        meta.setdefault("stand", f"simulated ({simulated.profile.name})")
    try:
        stand = open_stand(port, max_throttle=plan.limits["max_throttle"], load_cell=args.load_cell,
                           motor=args.motor_index)
        try:
            result = run_plan(stand, plan, output, meta=meta, status=sys.stderr, png=not args.no_png)
        except RunAborted as exc:
            _report(exc.result, args.json)
            raise
        except KeyboardInterrupt:
            print(f"\ninterrupted: throttle 0 sent; the samples received are in {output}", file=sys.stderr)
            if not args.no_png:
                _plot_quietly(output)
            return 130
    finally:
        if simulated is not None:
            simulated.close()
        if not args.output and os.path.exists(output) and os.path.getsize(output) == 0:
            os.remove(output)                       # reserved for this run, never written (the stand did not open)
    _report(result, args.json)
    return 0


def _plot_quietly(log_path: str) -> None:
    from thrust_stand.log import StandLogError
    from thrust_stand.plot import plot_run
    try:
        print(f"picture of the partial run: {plot_run(log_path)}", file=sys.stderr)
    except (StandLogError, OSError) as exc:
        log.warning("no picture of the interrupted run: %s", exc)


def _report(result, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"log": result.log_path, "png": result.png_path, "ended": result.ended, "rows": result.rows,
                          "counters": result.counters, "points": result.points}))
        return
    c = result.counters
    print(f"{result.ended}: {result.rows} samples in {result.log_path}"
          + (f", picture {result.png_path}" if result.png_path else ""))
    print(f"  link: {c['bad_checksum']} bad checksums, {c['malformed']} malformed lines, "
          f"{c['missed_samples']} missed samples, {c.get('clock_backwards', 0)} samples whose clock went "
          "backwards (all dropped, never written)")
    if result.points:
        print(f"  {'level':<12} {'throttle':>8} {'rpm':>8} {'thrust N':>9} {'torque N·m':>11} {'current A':>10}")
        for p in result.points:
            print(f"  {p['label']:<12} {p['throttle_cmd']:8.3f} {_num(p['rpm'], '8.0f')} {_num(p['thrust_n'], '9.3f')} "
                  f"{_num(p['torque_nm'], '11.4f')} {_num(p['current_a'], '10.2f')}")


def _num(value, spec: str) -> str:
    return f"{value:{spec}}" if value is not None else "-".rjust(int(spec.split(".")[0]))


def _sim(args) -> int:
    from thrust_stand.simstand import SimulatedStand
    with SimulatedStand(args.profile, seed=args.seed) as stand:
        print(stand.port, flush=True)
        print(f"simulated stand ({stand.profile.name}) on {stand.port}; e.g. "
              f"`skyloop stand run sweep --port {stand.port}`. Ctrl-C to stop.", file=sys.stderr)
        deadline = time.monotonic() + args.seconds if args.seconds else None
        try:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
    return 0


def _plan(args) -> int:
    from thrust_stand.plans import plan_path
    with open(plan_path(args.procedure), encoding="utf-8") as f:
        sys.stdout.write(f.read())
    return 0


def _import(args) -> int:
    from thrust_stand.tyto import import_tyto
    stand_log = import_tyto(args.export, args.output)
    meta = stand_log.meta
    units = ", ".join(f"{q} in {u}" for q, u in meta["units_in_export"].items()
                      if q in ("Thrust", "Torque", "Motor Optical Speed", "Motor Electrical Speed"))
    print(f"{len(stand_log)} rows from {args.export} -> {args.output} (SI; {units}; "
          f"rpm from {meta['speed_column'] or 'no speed column with readings'})")
    return 0
