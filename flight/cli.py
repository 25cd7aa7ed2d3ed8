"""`fly --course hall.json`: fly a course with an exported policy, on a real vehicle or on the
built-in simulated one (the default, when no --connect is given).

    fly --course hall.json                                   # the simulated vehicle, the shipped policy
    fly --course hall.json --connect udpin:0.0.0.0:14550     # a real flight controller (or MAVProxy --out)
    fly --course hall.json --connect /dev/ttyAMA0,921600 --policy my.onnx --profile my_quad.json
    fly --teleop                                             # drag the target on a web page (flight/teleop.py)

Exit status: 0 when the course was completed, 3 when a failsafe fired, 1 on an error before
arming (bad course, policy, connection), 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import socket
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:                      # imported when flying: `fly --help` stays instant
    from flight.course import Course
    from flight.runner import FlightResult

from skyloop.inputs import finite_arg
from skyloop.rowlog import reserve_log_path

log = logging.getLogger(__name__)
POLICY_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "policies")


def default_policy(mode: str) -> str:
    """The shipped policy `fly` flies for --mode: for ctbr the generalist (every task; on a course it sees the
    next gates and races them, README), for motor the hover-only per-motor one (a course: the sliding target)."""
    return os.path.join(POLICY_DIR, "generalist.onnx" if mode == "ctbr" else f"default_{mode}.onnx")


def add_arguments(parser) -> None:
    parser.add_argument("--course", default=None,
                        help="course JSON (a built-in name like hall, or a path); required unless --teleop, where it "
                             "only gives the geofence box and the start (default: a 10 x 10 x 3.5 m box, x and y "
                             "from -5 to 5 m, z up to 3.5 m, ENU, around the vehicle's local origin)")
    parser.add_argument("--policy", default=None,
                        help="exported policy (.onnx); default: the shipped one for --mode (flight/policies/)")
    parser.add_argument("--connect", default=None,
                        help="the vehicle: udpin:0.0.0.0:14550, udpout:HOST:PORT, tcp:HOST:PORT, /dev/ttyUSB0,57600; "
                             "default: start the built-in simulated vehicle and fly it")
    parser.add_argument("--autopilot", default="auto", choices=["auto", "ardupilot", "px4", "betaflight"],
                        help="which autopilot to expect (auto: from its heartbeat); also the simulated one's flavour. "
                             "betaflight: MSP (flight/msp/); without --connect the real Betaflight firmware (its "
                             "SITL, built once) flies the simulated drone; with --connect (tcp:127.0.0.1:5761, a "
                             "serial port) the pose comes as UDP packets on port 9005 (`skyloop sitl --betaflight`)"),
    parser.add_argument("--sitl", default=None, choices=["ardupilot", "ardupilot-quad"],
                        help="without --connect: the real ArduCopter SITL binary (flight/ardupilot_sitl.py), a fresh "
                             "one in a temp folder, with our sim as its physics (ardupilot: its JSON backend, lockstep) "
                             "or its own (ardupilot-quad); default profile camera15")
    parser.add_argument("--ardupilot-bin", default=None,
                        help="the arducopter SITL binary (default: $SKYLOOP_ARDUPILOT_BIN, else "
                             "../shared/peers/ardupilot/arducopter)")
    parser.add_argument("--set-params", action="store_true",
                        help="let fly set the vehicle parameters it needs (ArduPilot: GUID_OPTIONS bit 3, GUID_TIMEOUT "
                             "0.2 s, ATC_ANGLE_BOOST 0) instead of refusing to fly")
    parser.add_argument("--pose", default=None,
                        help="an external pose forwarded to the autopilot at 40 Hz (indoors, no GPS): "
                             "mocap://TYPE@HOST/BODY (the motioncapture package: vicon, optitrack, qualisys, vrpn, ...) "
                             "or, with --sitl ardupilot, sim://?noise_m=0.003&latency_s=0.02 (our sim's truth; the "
                             "SITL's GPS is then off)")
    parser.add_argument("--course-frame", default=None, choices=["local", "start"],
                        help="where the course lies in the vehicle's local frame: local (its coordinates; the vehicle "
                             "must stand within 1 m of the course's start) or start (placed at the vehicle: a GPS EKF "
                             "origin is where it started). Default: start for the built-in simulated vehicle and for "
                             "--sitl ardupilot with GPS (their origin is where they start); local with --pose, "
                             "--connect and Betaflight")
    parser.add_argument("--mode", default=None, choices=["ctbr", "motor"],
                        help="action mode (default: the policy's); must match the policy")
    parser.add_argument("--profile", default=None,
                        help="the drone flown (profile name or JSON; its hover thrust is an observation); "
                             "default: crazyflie21 for the simulated vehicle, required for a real one")
    parser.add_argument("--lockstep", action="store_true",
                        help="the built-in simulated vehicle in lockstep with the runner: the runner's clock is its "
                             "sim time (each tick: the command, then the telemetry that step produced, no sleeps), "
                             "deterministic and as fast as the CPU allows, whatever the machine load; for tests and "
                             "CI (tick times and missed ticks then say nothing about real time)")
    parser.add_argument("--laps", type=finite_arg(1, 100, integer=True), default=None,
                        help="laps of --course (default: the course's own)")
    parser.add_argument("--max-tilt", type=finite_arg(10.0, 90.0), default=70.0, metavar="DEG",
                        help="failsafe above this tilt [deg]; a racer at speed leans further than a hovering quad")
    parser.add_argument("--lookahead", type=finite_arg(0.1, 10.0), default=1.5, help="how far ahead along the course the target leads [m]")
    parser.add_argument("--max-time", type=finite_arg(1.0, 3600.0), default=180.0,
                        help="failsafe if the course (with --teleop: the flight) is not done by then [s]")
    parser.add_argument("--log", default="flights", help="folder for the flight log (CSV + JSON) and the picture")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG at the end (headless companion computer)")
    parser.add_argument("--dry-run", action="store_true",
                        help="connect, load and check everything, then stop before arming")
    parser.add_argument("--json", action="store_true", help="print a JSON summary at the end")
    parser.add_argument("--teleop", action="store_true",
                        help="fly to a target dragged on a web page the runner serves (its URL is printed at start)")
    parser.add_argument("--view", action=argparse.BooleanOptionalAction, default=None,
                        help="serve the flight view (the drone, the course and the sim's 1 s prediction, live; "
                             "its URL is printed on a line of its own); default: on when a display is likely "
                             "(a desktop session), off in CI and on headless machines")
    parser.add_argument("--teleop-port", type=int, default=8765,
                        help="the page's port, teleop and flight view (0: any free one)")
    parser.add_argument("--teleop-bind", default="127.0.0.1",
                        help="the page's address; any non-loopback one requires the token printed at start")
    parser.add_argument("--teleop-land-after", type=finite_arg(0.5, 600.0), default=10.0,
                        help="with the teleop page closed or silent for 1 s the target holds; land after this long [s]")


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Flown:
    """A flight that took off: what happened, its log, its course."""
    result: FlightResult
    log_path: str
    course: Course


def fly(args) -> Flown | int:
    """Flies as the options say; returns the Flown flight, or the exit status when nothing flew
    (bad arguments 2, a dry run 0 or 1, a teleop session ended before take-off 0)."""
    from flight.connection import parse_connection
    from flight.course import load_course
    from flight.link import MavLink
    from flight.realtime import raised_priority
    from flight.runner import StatusLine, fly_course
    from flight.sitl.vehicle import ARDUPILOT_ARMING_DELAY_S
    from policy_export import load_policy
    from sim.profiles import load_profile

    if args.course is None and not args.teleop:
        print("fly: error: --course is required (or --teleop, to drag the target on a web page)", file=sys.stderr)
        return 2
    if args.course is not None:
        course = load_course(args.course)             # a malformed course fails here, before connecting
        if args.laps is not None:
            from dataclasses import replace
            course = replace(course, laps=args.laps)
    else:
        from flight.teleop import default_box_course
        course = default_box_course()
    policy_path = args.policy or default_policy(args.mode or "ctbr")
    modes = (args.mode,) if args.mode else ("ctbr", "motor")
    policy = load_policy(policy_path, action_modes=modes)
    if args.sitl is not None and (args.connect is not None or args.autopilot not in ("auto", "ardupilot")):
        print("fly: error: --sitl ardupilot starts its own vehicle: leave out --connect, use --autopilot ardupilot",
              file=sys.stderr)
        return 2
    if args.lockstep and (args.connect is not None or args.sitl is not None or args.autopilot == "betaflight"
                          or args.teleop):
        print("fly: error: --lockstep is for the built-in simulated vehicle flying a course: leave out --connect, "
              "--sitl and --teleop (a person flies teleop in real time); --autopilot ardupilot or px4", file=sys.stderr)
        return 2
    if args.connect is None:
        profile = load_profile(args.profile or ("fpv5" if args.autopilot == "betaflight" else
                                                "camera15" if args.sitl else "crazyflie21"))
    elif args.profile is None:
        raise ValueError("--profile is required with --connect: the policy needs the drone's hover thrust "
                         "(use the profile you calibrated, e.g. --profile my_quad.json)")
    else:
        profile = load_profile(args.profile)
    connection = parse_connection(args.connect) if args.connect else None
    rate_max = policy.metadata.get("action_scaling", {}).get("rate_max_rad_s", profile.params["rate_max_rad_s"])

    course_frame = args.course_frame or "local"       # a vehicle we did not start: its origin is the user's to say
    with contextlib.ExitStack() as stack:
        # real time where allowed (flight/realtime.py), before the vehicle's process starts (it inherits it),
        # and back as it was once everything has stopped
        log.info("CPU priority: %s", stack.enter_context(raised_priority()))
        if args.sitl is not None:
            connection, course_frame = _ardupilot_sitl(args, stack, profile, course)
        elif connection is None and args.autopilot != "betaflight":
            port = _free_udp_port()
            autopilot = "ardupilot" if args.autopilot == "auto" else args.autopilot
            stack.enter_context(_sitl_process(args.profile or "crazyflie21", port, autopilot, course,
                                              ARDUPILOT_ARMING_DELAY_S if autopilot == "ardupilot" else 0.0,
                                              args.lockstep))
            course_frame = args.course_frame or "start"   # it reports positions from where it started, as with GPS
            connection = parse_connection(f"udpin:127.0.0.1:{port}")
            print(f"fly: simulated {autopilot} vehicle ({profile.name}) on {connection}, in its own process",
                  file=sys.stderr)
        # a new file per run (two runs in the same second never share one); the course name is a plain name
        log_path = os.path.join(args.log, "dry-run.csv") if args.dry_run else reserve_log_path(args.log, course.name)
        if args.autopilot == "betaflight":
            link = stack.enter_context(_betaflight_link(stack, connection, profile, course, policy, rate_max))
        else:
            tlog = None if args.dry_run else os.path.splitext(log_path)[0] + ".tlog"
            link = stack.enter_context(MavLink(connection, args.autopilot, policy.action_mode, rate_max,
                                               tlog_path=tlog, set_params=args.set_params, lockstep=args.lockstep))
            if args.pose is not None and args.sitl is None:
                _forward_pose(stack, args.pose, link)
        # the course in the vehicle's frame (flight/origin.py), for the view, the teleop page and the picture;
        # fly_course applies the same rule again before arming and logs the offset
        from flight.origin import CourseOriginError, place_course
        state = link.wait_for_state()
        unplaced = course
        if args.dry_run:
            from flight.safety import preflight
            problems = []
            try:
                course = place_course(course, state["pos_enu_m"], course_frame)[0] if state is not None else course
            except CourseOriginError as exc:
                problems.append(str(exc))
            problems += preflight(course, state, link.battery_v, link.cells)
            print("dry run: " + ("ready to fly" if not problems else "NOT ready:\n  - " + "\n  - ".join(problems)))
            return 0 if not problems else 1
        if state is not None:
            course = place_course(course, state["pos_enu_m"], course_frame)[0]
        meta = {"policy": policy_path, "policy_sha256": policy.metadata.get("contract_sha256")}
        view = _view(args, stack, policy_path, policy, profile, course)
        if args.teleop:
            result = _teleop(args, stack, link, policy, unplaced, course, course_frame, profile, log_path, meta, view)
            if result is None:
                print("teleop: ended before take-off; nothing flew", file=sys.stderr)
                return 0
        else:
            if view is not None:
                _serve_view(args, stack, link, course, view)
            result = fly_course(link, policy, unplaced, profile, log_path, lookahead_m=args.lookahead,
                                limits=_limits(args), max_time_s=args.max_time, status=StatusLine(), meta=meta,
                                course_frame=course_frame, view=view)
    return Flown(result, log_path, course)


def report(args, flown: Flown, summary: dict | None = None) -> int:
    """Prints the flight's outcome (one line, or JSON with --json); returns the exit status."""
    result, log_path = flown.result, flown.log_path
    summary = summary if summary is not None else result.summary()
    if result.log_fault:
        print(f"fly: WARNING: logging failed during the flight (the flight itself went on): {result.log_fault}",
              file=sys.stderr)
    if args.json:
        print(json.dumps(summary))
    else:
        outcome = "completed" if result.failsafe is None else f"FAILSAFE: {result.failsafe}"
        lap = f", lap {result.lap_time_s:.1f} s" if result.lap_time_s else ""
        gates = f"{result.gates_passed}/{result.gates_total} gates" if result.gates_total else "teleop flight"
        print(f"{outcome}: {gates}{lap}; tick p99 {result.tick_p99_ms:.2f} ms, "
              f"{result.missed_ticks} missed of {result.ticks}; log {log_path}")
    return 0 if result.failsafe is None else 3


def run(args) -> int:
    """`fly` without its picture (the CLI's fly verb, skyloop/verbs/fly.py, draws it)."""
    flown = fly(args)
    return flown if isinstance(flown, int) else report(args, flown)


@contextlib.contextmanager
def _sitl_process(profile: str, port: int, autopilot: str, course, arming_delay_s: float = 0.0,
                  lockstep: bool = False):
    """The built-in simulated vehicle (`skyloop sitl`) in a process of its own, so that it never
    shares an interpreter (and its lock) with the control loop; stopped when the block ends."""
    import math
    import subprocess
    import tempfile
    e, n, u = (f"{v:.6g}" for v in course.start_pos_enu_m)
    cmd = [sys.executable, "-m", "skyloop", "sitl", "--profile", profile, "--autopilot", autopilot,
           "--listen", f"udpout:127.0.0.1:{port}", "--start", e, n, u, f"{math.degrees(course.start_yaw_rad):.6g}",
           "--arming-delay", f"{arming_delay_s:g}", "--origin", "start"] + (["--speed", "lockstep"] if lockstep else [])
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.returncode not in (0, -15):
                errors.seek(0)
                tail = errors.read()[-2000:].decode(errors="replace").strip()
                log.error("the simulated vehicle exited with status %s:\n%s", proc.returncode, tail)


def _ardupilot_sitl(args, stack, profile, course):
    """--sitl ardupilot: a fresh ArduCopter SITL (flight/ardupilot_sitl.py), ready to arm; with
    --pose sim://..., its GPS off and our sim's truth as its motion capture. Returns the connection
    and the course frame (a GPS EKF origin is the start; the mocap's is the course's)."""
    from flight.ardupilot_sitl import ArduPilotSitl
    from flight.connection import parse_connection
    pose = None
    if args.pose is not None:
        from flight.mocap import PoseError, parse_pose
        if not args.pose.startswith("sim:"):
            raise PoseError("with --sitl ardupilot the pose is our sim's truth: --pose sim://?noise_m=...")
        pose = parse_pose(args.pose)
    model = "quad" if args.sitl == "ardupilot-quad" else "JSON"
    print(f"fly: starting the ArduCopter SITL ({'its own physics' if model == 'quad' else profile.name + ' in our sim'}"
          f"{', no GPS, ' + pose.describe() if pose else ', GPS'})", file=sys.stderr)
    sitl = stack.enter_context(ArduPilotSitl(profile, course.start_pos_enu_m, course.start_yaw_rad, model=model,
                                             binary=args.ardupilot_bin, gps=pose is None, pose=pose))
    sitl.wait_ready()
    connection = parse_connection(sitl.mavlink_url)
    print(f"fly: ArduCopter SITL ready on {connection}", file=sys.stderr)
    return connection, args.course_frame or ("local" if pose is not None else "start")


def _forward_pose(stack, url: str, link) -> None:
    """--pose mocap://... with --connect: the motion capture to the vehicle, on the link, at 40 Hz."""
    from flight.mocap import PoseError, PoseForwarder, parse_pose
    if url.startswith("sim:"):
        raise PoseError("--pose sim:// is our sim's truth: it needs --sitl ardupilot (a real vehicle: mocap://)")
    source = parse_pose(url)
    stack.callback(source.close)
    forwarder = PoseForwarder(source, link.master, link.autopilot, target_system=link.target[0]).start()
    stack.callback(forwarder.stop)
    print(f"fly: forwarding the {source.describe()} to the vehicle at 40 Hz", file=sys.stderr)


def _betaflight_link(stack, connection, profile, course, policy, rate_max):
    """Betaflight over MSP, the pose from UDP port 9005; without --connect, first the Betaflight SITL
    (flight/betaflight_sitl/) flying the simulated drone, stopped when the stack closes."""
    from flight.betaflight_sitl import MSP_TCP_PORT, POSE_PORT, BetaflightSitl
    from flight.connection import parse_connection
    from flight.msp import MspLink, PoseReceiver
    if connection is None:
        print("fly: starting the Betaflight SITL (the first time it is compiled: about a minute)", file=sys.stderr)
        stack.enter_context(BetaflightSitl(profile, course.start_pos_enu_m, course.start_yaw_rad))
        connection = parse_connection(f"tcp:127.0.0.1:{MSP_TCP_PORT}")
        print(f"fly: Betaflight SITL flying the simulated {profile.name} on {connection}", file=sys.stderr)
    return MspLink(connection, profile, policy.action_mode, rate_max, pose=PoseReceiver(POSE_PORT))


def _view(args, stack, policy_path, policy, profile, course):
    """The live flight view (flight/view.py) with its ghost process, when asked for or a display is likely."""
    from flight.view import FlightView, display_likely
    if not (args.view if args.view is not None else display_likely()):
        return None
    return stack.enter_context(FlightView.for_flight(policy_path, policy, profile, course, lookahead_m=args.lookahead))


def _serve_view(args, stack, link, course, view):
    """Serves the flight view's page (without teleop) and prints its URL on a line of its own."""
    from flight.page_server import PageServer
    from flight.teleop import vehicle_status
    server = stack.enter_context(PageServer(None, lambda: vehicle_status(link, course), args.teleop_bind,
                                            args.teleop_port, view=view))
    print("fly: the flight view (the drone, the course, the sim's 1 s prediction):", file=sys.stderr)
    print(server.url, flush=True)
    return server


def _limits(args):
    from flight.safety import Limits
    return Limits(max_tilt_rad=math.radians(args.max_tilt))


def _teleop(args, stack, link, policy, course, placed, course_frame, profile, log_path, meta, view=None):
    """Serves the teleop page, prints its URL on a line of its own, waits for Take off, flies.
    `placed` is the course in the vehicle's frame (the page's box and targets); fly_course places
    `course` itself by `course_frame`."""
    from flight.runner import StatusLine
    from flight.page_server import PageServer
    from flight.teleop import TeleopTargets, run_teleop, vehicle_status
    targets = TeleopTargets(placed, land_after_s=args.teleop_land_after)
    server = stack.enter_context(PageServer(targets, lambda: vehicle_status(link, placed), args.teleop_bind,
                                            args.teleop_port, view=view))
    token_note = "; it carries the token that commands need" if server.token else ""
    if args.teleop_bind in ("0.0.0.0", "::"):
        token_note += "; from another machine, put this machine's address in place of 127.0.0.1"
    print(f"teleop: open this page, then press Take off (Ctrl-C quits){token_note}:", file=sys.stderr)
    print(server.url, flush=True)
    return run_teleop(link, policy, course, profile, log_path, targets, limits=_limits(args), max_time_s=args.max_time,
                      status=StatusLine(), meta={**meta, "teleop": {"bind": args.teleop_bind, "port": server.port}},
                      view=view, course_frame=course_frame)
