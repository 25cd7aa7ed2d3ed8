"""The real ArduPilot firmware (its ArduCopter SITL binary) in the loop.

    with ArduPilotSitl(profile="camera15", start_pos_enu_m=(-14, -8, 0)) as sitl:   # --model JSON: our sim
        ...   # MAVLink on sitl.mavlink_url (tcp:127.0.0.1:5760 + 10 * instance)
    with ArduPilotSitl(model="quad") as sitl:                                       # ArduPilot's own physics

Each start is a fresh vehicle: the binary runs in a new temporary folder (its eeprom.bin, logs/),
on its own instance number (`-I N` adds 10 N to every port), so several can run side by side and
ArduCopter 4.5's "Internal errors 0x100000 after a landing" (ArduPilot issue 26865) never carries
over to the next flight.

The physics bridge (our sim in ArduPilot's JSON backend, lockstep) is flight/ardupilot_bridge.py.
"""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import tempfile
import time

import numpy as np

from flight.ardupilot_bridge import (G_M_S2, PHYSICS_DT_S, BridgeError, BridgeProcess, JsonBridge,  # noqa: F401
                                     _accepts, pack_state, pwm_to_action, unpack_servos)
from flight import realtime
from flight.service import FirmwareSitl
from sim.profiles import Profile, load_profile
from skyloop import frames

log = logging.getLogger(__name__)
# Until it is ready (its EKF has a position: about 40 s of sim time with GPS), the SITL runs as fast
# as the bridge answers (lockstep: 5..10x real time here); then SIM_SPEEDUP 1, for the real-time runner.
STARTUP_SPEEDUP = 10.0
BASE_PORTS = {"mavlink_tcp": 5760, "serial1_tcp": 5762, "serial2_tcp": 5763, "json_udp": 9002, "rc_udp": 5501}
MAX_INSTANCE = 60
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_BINARY = os.path.join(os.path.dirname(REPO_ROOT), "shared", "peers", "ardupilot", "arducopter")
HOW_TO_GET = ("build ArduPilot's SITL (git clone https://github.com/ArduPilot/ardupilot; ./waf configure --board sitl "
              "&& ./waf copter; the binary is build/sitl/bin/arducopter) and pass it with --ardupilot-bin or "
              "SKYLOOP_ARDUPILOT_BIN")
# The vehicle setup this project flies with (what a user sets once on a real vehicle, see README):
# SET_ATTITUDE_TARGET thrust is thrust (GUID_OPTIONS bit 3), and a stalled companion computer's
# last command stops being flown after 0.2 s (GUID_TIMEOUT; ArduPilot's default is 3 s), and no angle
# boost (thrust / cos(tilt)), which the policy was not trained with.
VEHICLE_SETUP = {"GUID_OPTIONS": 8, "GUID_TIMEOUT": 0.2, "ATC_ANGLE_BOOST": 0}
# Our sim's airframe, for the JSON model: quad X (ArduPilot's SITL defaults, copter.parm, set "+",
# which flown on an X airframe mixes roll into pitch: a growing whirl within 2 s of leaving the ground).
JSON_FRAME = {"FRAME_CLASS": 1, "FRAME_TYPE": 1}
# Indoors, no GPS: position, velocity and yaw from an external pose (VISION_POSITION_ESTIMATE /
# VISION_SPEED_ESTIMATE over MAVLink, flight/mocap.py), height from it too; SITL's GPS and compass off.
NO_GPS_SETUP = {"SIM_GPS_DISABLE": 1, "GPS_TYPE": 0, "VISO_TYPE": 1, "EK3_SRC1_POSXY": 6, "EK3_SRC1_VELXY": 6,
                "EK3_SRC1_POSZ": 6, "EK3_SRC1_VELZ": 6, "EK3_SRC1_YAW": 6, "COMPASS_USE": 0, "COMPASS_USE2": 0,
                "COMPASS_USE3": 0, "ARMING_CHECK": 1}


class ArduPilotSitlError(BridgeError):
    """The ArduPilot SITL could not be found or started; the message says why and what to do."""


def find_binary(explicit: str | None = None) -> str:
    """The arducopter SITL binary: `explicit` (--ardupilot-bin), else $SKYLOOP_ARDUPILOT_BIN, else
    ../shared/peers/ardupilot/arducopter next to the repository."""
    for where, path in (("--ardupilot-bin", explicit), ("SKYLOOP_ARDUPILOT_BIN", os.environ.get("SKYLOOP_ARDUPILOT_BIN")),
                        ("the default place", DEFAULT_BINARY)):
        if not path:
            continue
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
        if where != "the default place":
            raise ArduPilotSitlError(f"{where} names {path}, which is not an executable file: {HOW_TO_GET}")
    raise ArduPilotSitlError(f"no ArduPilot SITL binary (looked at {DEFAULT_BINARY}): {HOW_TO_GET}")


# ------------------------------------------------------------------------------------ the binary
def _port_free(port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_instance(first: int = 1) -> int:
    """An instance number whose ports (BASE_PORTS + 10 N) are all free on this machine."""
    for n in range(first, MAX_INSTANCE):
        tcp = all(_port_free(BASE_PORTS[k] + 10 * n, socket.SOCK_STREAM) for k in ("mavlink_tcp", "serial1_tcp",
                                                                                    "serial2_tcp"))
        if tcp and all(_port_free(BASE_PORTS[k] + 10 * n, socket.SOCK_DGRAM) for k in ("json_udp", "rc_udp")):
            return n
    raise ArduPilotSitlError(f"no free ArduPilot SITL instance in 1..{MAX_INSTANCE - 1}: stop other SITLs")


def write_defaults(path: str, params: dict) -> None:
    """ArduPilot's own SITL copter defaults (copter.parm next to the binary, when there), then ours."""
    base = os.path.join(os.path.dirname(DEFAULT_BINARY), "copter.parm")
    lines = []
    if os.path.isfile(base):
        with open(base) as f:
            lines = [f.read().rstrip("\n")]
    lines += [f"{name} {float(value):g}" for name, value in params.items()]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


class ArduPilotSitl(FirmwareSitl):
    """Starts the ArduCopter SITL in a fresh temporary folder, with our sim as its physics (model
    "JSON", the bridge) or its own ("quad"); waits until its pre-arm checks pass (ready()); leaving
    the `with` block stops it (its motors stop with it) and removes the folder."""

    def __init__(self, profile: str | Profile = "camera15", start_pos_enu_m=(0.0, 0.0, 0.0), start_yaw_rad: float = 0.0,
                 *, model: str = "JSON", binary: str | None = None, params: dict | None = None,
                 setup: bool = True, gps: bool = True, pose=None, ready_timeout_s: float = 90.0):
        if model not in ("JSON", "quad"):
            raise ArduPilotSitlError(f"model {model!r}: use JSON (our sim as the physics) or quad (ArduPilot's own)")
        self.profile = profile if isinstance(profile, Profile) else load_profile(profile)
        self.start_pos_enu_m, self.start_yaw_rad = np.asarray(start_pos_enu_m, float), float(start_yaw_rad)
        self.model, self.binary = model, find_binary(binary)
        self.params = {**(JSON_FRAME if model == "JSON" else {}), **(VEHICLE_SETUP if setup else {}),
                       **({} if gps else NO_GPS_SETUP), **(params or {})}
        self.gps, self.ready_timeout_s = gps, ready_timeout_s
        if not gps and pose is None:
            raise ArduPilotSitlError("without GPS the vehicle needs a pose source (e.g. flight.mocap.SimulatedMocap)")
        self.pose = pose                            # a pose source, forwarded on SERIAL2 (pose_url) by the bridge
        self.instance: int | None = None
        self.process: subprocess.Popen | None = None
        self.bridge: BridgeProcess | None = None
        self.workdir: tempfile.TemporaryDirectory | None = None

    @property
    def mavlink_url(self) -> str:
        return f"tcp:127.0.0.1:{BASE_PORTS['mavlink_tcp'] + 10 * self.instance}"

    @property
    def spare_url(self) -> str:
        """A second MAVLink port (SERIAL1), e.g. for a pose forwarder or a ground station."""
        return f"tcp:127.0.0.1:{BASE_PORTS['serial1_tcp'] + 10 * self.instance}"

    @property
    def pose_url(self) -> str:
        """The MAVLink port (SERIAL2) the pose source is forwarded on."""
        return f"tcp:127.0.0.1:{BASE_PORTS['serial2_tcp'] + 10 * self.instance}"

    def start(self) -> None:
        self.instance = free_instance()
        self.workdir = tempfile.TemporaryDirectory(prefix="ardupilot-sitl-")
        try:
            if self.model == "JSON":
                self.bridge = BridgeProcess(self.profile, BASE_PORTS["json_udp"] + 10 * self.instance,
                                            self.start_pos_enu_m, self.start_yaw_rad, self.pose, self.pose_url)
                self.bridge.start()
            defaults = os.path.join(self.workdir.name, "defaults.parm")
            write_defaults(defaults, self.params)
            heading_deg = np.degrees(frames.yaw_enu_to_ned(self.start_yaw_rad)) % 360.0
            cmd = [self.binary, "--model", "JSON:127.0.0.1" if self.model == "JSON" else "quad", "--speedup", f"{STARTUP_SPEEDUP:g}",
                   "--defaults", defaults, "--home", f"-35.363262,149.165237,584,{heading_deg:.1f}",
                   "-I", str(self.instance), "--serial0", "tcp:0:nowait"]
            log_path = os.path.join(self.workdir.name, "sitl.log")
            with open(log_path, "w") as out:
                self.process = subprocess.Popen(cmd, cwd=self.workdir.name, stdin=subprocess.DEVNULL, stdout=out,
                                                stderr=subprocess.STDOUT, preexec_fn=_child_setup)
            log.info("ArduPilot SITL (pid %d, instance %d, model %s) in %s", self.process.pid, self.instance,
                     self.model, self.workdir.name)
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Waits, on the spare MAVLink port, until ArduPilot reports its pre-arm checks passing
        (SYS_STATUS health bit MAV_SYS_STATUS_PREARM_CHECK) with a local position (its EKF has an
        origin) and runs at real time (SIM_SPEEDUP 1); raises with its last messages otherwise."""
        from flight.link import mavutil, mav
        timeout_s = self.ready_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while not _accepts(self.spare_url):       # (pymavlink would print its retries on stdout)
            self.check_alive()
            if time.monotonic() > deadline:
                raise ArduPilotSitlError(f"the ArduPilot SITL does not open {self.spare_url}:\n{self.output_tail()}")
            time.sleep(0.2)
        master = mavutil.mavlink_connection(self.spare_url, source_system=254, autoreconnect=True)
        texts: list[str] = []
        try:
            have_pos, healthy, asked, speed, speed_asked = False, False, 0.0, STARTUP_SPEEDUP, 0.0
            while not (have_pos and healthy and speed == 1.0):
                now = time.monotonic()
                if now > deadline:
                    raise ArduPilotSitlError(
                        f"the ArduPilot SITL was not ready to arm in {timeout_s:g} s (local position: {have_pos}, "
                        f"pre-arm checks passing: {healthy}); its last messages: {texts[-5:]}")
                self.check_alive()
                if now > asked:
                    master.mav.heartbeat_send(mav.MAV_TYPE_GCS, mav.MAV_AUTOPILOT_INVALID, 0, 0, 0)
                    for msg_id in (mav.MAVLINK_MSG_ID_SYS_STATUS, mav.MAVLINK_MSG_ID_LOCAL_POSITION_NED):
                        master.mav.command_long_send(1, 1, mav.MAV_CMD_SET_MESSAGE_INTERVAL, 0, msg_id, 2e5,
                                                     0, 0, 0, 0, 0)
                    asked = now + 1.0
                if have_pos and healthy and now > speed_asked:        # ready: from now on, real time
                    master.mav.param_set_send(1, 1, b"SIM_SPEEDUP", 1.0, mav.MAV_PARAM_TYPE_REAL32)
                    speed_asked = now + 0.5
                msg = master.recv_match(type=["SYS_STATUS", "LOCAL_POSITION_NED", "STATUSTEXT", "PARAM_VALUE"], blocking=True,
                                        timeout=0.02)
                if msg is None:
                    continue
                kind = msg.get_type()
                if kind == "LOCAL_POSITION_NED":
                    have_pos = True
                elif kind == "SYS_STATUS":
                    healthy = bool(msg.onboard_control_sensors_health & mav.MAV_SYS_STATUS_PREARM_CHECK)
                elif kind == "PARAM_VALUE" and msg.param_id == "SIM_SPEEDUP":
                    speed = float(msg.param_value)
                elif kind == "STATUSTEXT":
                    texts.append(msg.text)
                    log.info("ArduPilot: %s (sim %.1f s)", msg.text, self.bridge.state()["t_s"] if self.bridge else -1)
        finally:
            master.close()

    def output_tail(self, chars: int = 1500) -> str:
        if self.workdir is None:
            return ""
        try:
            with open(os.path.join(self.workdir.name, "sitl.log"), errors="replace") as f:
                return f.read()[-chars:]
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            raise ArduPilotSitlError(f"the ArduPilot SITL exited (status {self.process and self.process.poll()}); "
                                     f"its output ends:\n{self.output_tail()}")


def _child_setup() -> None:
    """In the SITL's process, before it runs: SIGTERM when the process that started it dies, even
    killed; real-time scheduling where allowed (as `fly` itself and the bridge: the lockstep pair
    waits on each other 1000 times a second), else nice -NICE_BOOST, else as it is. No logging here
    (a forked child)."""
    import ctypes
    import signal
    ctypes.CDLL(None).prctl(1, int(signal.SIGTERM), 0, 0, 0)    # PR_SET_PDEATHSIG
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(realtime.RT_PRIORITY))
    except (OSError, AttributeError):
        try:
            os.nice(min(0, -realtime.NICE_BOOST - os.nice(0)))
        except OSError:
            pass
