"""The real ArduPilot firmware (its ArduCopter SITL binary) in the loop.

    with ArduPilotSitl(profile="camera15", start_pos_enu_m=(-14, -8, 0)) as sitl:   # --model JSON: our sim
        ...   # MAVLink on sitl.mavlink_url (tcp:127.0.0.1:5760 + 10 * instance)
    with ArduPilotSitl(model="quad") as sitl:                                       # ArduPilot's own physics

Each start is a fresh vehicle: the binary runs in a new temporary folder (its eeprom.bin, logs/),
on its own instance number (`-I N` adds 10 N to every port), so several can run side by side and
ArduCopter 4.5's "Internal errors 0x100000 after a landing" (ArduPilot issue 26865) never carries
over to the next flight.

The JSON physics backend (reference: ../shared/peers/ardupilot/reference/SIM_JSON.cpp) is lockstep:
every physics frame ArduPilot sends one servo packet (uint16 magic 18458, uint16 frame rate,
uint32 frame count, uint16 pwm[16]; magic 29569 with pwm[32]) to udp 9002 + 10 N and waits for
one JSON line back, sent to the address the packet came from:

    {"timestamp": s, "imu": {"gyro": [FRD rad/s], "accel_body": [FRD m/s^2, specific force]},
     "position": [NED m], "velocity": [NED m/s], "quaternion": [w, x, y, z NED <- FRD]}

so our sim sets the pace and the flight holds under any load. Our C sim is the physics (`motor`
action mode, the nominal profile, one PHYSICS_DT_S RK4 step per frame): pwm 1000..2000 us is the
throttle 0..1 of each motor, in the sim's order (ArduPilot quad-X is the same: 1 front-right,
2 back-left, 3 front-left, 4 back-right). The position is sent relative to where the vehicle
starts, so ArduPilot's home, its EKF origin and LOCAL_POSITION_NED (0, 0, 0) are the start
position, as on a real vehicle. A repeated frame count (ArduPilot re-sends a frame after 1 s
without a reply) is answered without stepping again.

ArduPilot reads the sensors it simulates from this state (IMU, barometer, compass from the
attitude, GPS unless disabled); its own EKF, rate loops and GUIDED_NOGPS fly the sim.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import struct
import subprocess
import tempfile
import threading
import time

import numpy as np

from flight.service import Service, stop_process
from sim.env import DroneEnv
from sim.profiles import Profile, load_profile
from skyloop import frames

log = logging.getLogger(__name__)
SERVO_MAGIC_16, SERVO_MAGIC_32 = 18458, 29569
SERVO_HEADER = "<HHI"
SERVO_HEADER_SIZE = struct.calcsize(SERVO_HEADER)
# Until it is ready (its EKF has a position: about 40 s of sim time with GPS), the SITL runs as fast
# as the bridge answers (lockstep: 5..10x real time here); then SIM_SPEEDUP 1, for the real-time runner.
STARTUP_SPEEDUP = 10.0
PHYSICS_DT_S = 0.001            # 1 kHz physics frames (ArduCopter's default SIM_RATE_HZ is 1200, its loop 400 Hz)
G_M_S2 = 9.80665
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


class ArduPilotSitlError(OSError):
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


# ------------------------------------------------------------------------------------ packets
def unpack_servos(data: bytes) -> tuple[int, int, np.ndarray]:
    """A servo packet -> (frame rate Hz, frame count, pwm us for all its channels)."""
    if len(data) < SERVO_HEADER_SIZE:
        raise ArduPilotSitlError(f"servo packet of {len(data)} bytes, shorter than its header")
    magic, rate_hz, count = struct.unpack_from(SERVO_HEADER, data)
    channels = {SERVO_MAGIC_16: 16, SERVO_MAGIC_32: 32}.get(magic)
    if channels is None or len(data) != SERVO_HEADER_SIZE + 2 * channels:
        raise ArduPilotSitlError(f"not an ArduPilot servo packet (magic {magic}, {len(data)} bytes)")
    return rate_hz, count, np.array(struct.unpack_from(f"<{channels}H", data, SERVO_HEADER_SIZE), float)


def pwm_to_action(pwm_us) -> np.ndarray:
    """Motor pwm (1000..2000 us, 0 = output off) -> the sim's motor action in [-1, 1]."""
    throttle = np.clip((np.asarray(pwm_us[:4], float) - 1000.0) / 1000.0, 0.0, 1.0)
    return (2.0 * throttle - 1.0).astype(np.float32)


def pack_state(t_s: float, omega_flu_rad_s, specific_force_flu_m_s2, quat_enu_flu, vel_enu_m_s, pos_enu_m) -> bytes:
    """The JSON line the backend reads, from the sim's frames (world ENU, body FLU). Compact
    separators: ArduPilot's parser scans `"key":[a,b,c]` with sscanf and no leading space."""
    def r(v):
        return [round(float(x), 7) for x in v]
    msg = {"timestamp": round(float(t_s), 6),
           "imu": {"gyro": r(frames.flu_to_frd(omega_flu_rad_s)), "accel_body": r(frames.flu_to_frd(specific_force_flu_m_s2))},
           "position": r(frames.enu_to_ned(pos_enu_m)), "velocity": r(frames.enu_to_ned(vel_enu_m_s)),
           "quaternion": r(frames.quat_enu_flu_to_ned_frd(quat_enu_flu))}
    return ("\n" + json.dumps(msg, separators=(",", ":")) + "\n").encode()


# ------------------------------------------------------------------------------------ the bridge
class JsonBridge:
    """Our sim as ArduPilot's physics, lockstep: each servo packet is one physics step, answered
    with the state after it. Runs in a thread; `state()` is the sim's truth (ENU, absolute)."""

    def __init__(self, profile: Profile, port: int, start_pos_enu_m=(0.0, 0.0, 0.0), start_yaw_rad: float = 0.0):
        self.env = DroneEnv(1, profile.nominal(), action_mode="motor", randomize=False,
                            task={"bounds_m": [1e4, 1e4, 1e4], "episode_s": 1e5, "physics_dt_s": PHYSICS_DT_S,
                                  "control_hz": 1.0 / PHYSICS_DT_S})
        self.env.reset(seed=0)
        self.start_pos_enu_m = np.asarray(start_pos_enu_m, float)
        self.env.set_state(0, pos_enu_m=self.start_pos_enu_m, vel_enu_m_s=[0, 0, 0], omega_flu_rad_s=[0, 0, 0],
                           quat_wxyz=frames.quat_from_axis_angle([0, 0, 1], start_yaw_rad), rotor_rad_s=[0, 0, 0, 0])
        self.sim_time_s = 0.0
        self.pwm = np.zeros(4)
        self.frame_count: int | None = None
        self.counters = {"frames": 0, "repeats": 0, "bad": 0, "resets": 0}
        self.crashed = False
        self._specific_force_flu = np.array([0.0, 0.0, G_M_S2])
        self._reply: bytes | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._observers: list = []                 # called with (sim_time_s, truth) after each step
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.bind(("127.0.0.1", port))
        except OSError as exc:
            self.sock.close()
            raise ArduPilotSitlError(f"udp port {port} (ArduPilot's JSON servo packets) is taken: {exc}") from None
        self.sock.settimeout(0.2)
        self.port = port

    def add_observer(self, fn) -> None:
        """fn(sim_time_s, truth) after every physics step (in the bridge's thread): a simulated
        motion capture reads the truth here (flight/mocap.py)."""
        self._observers.append(fn)

    def state(self) -> dict:
        with self._lock:
            return {**self.env.state(0), "t_s": self.sim_time_s, "pwm": self.pwm.copy()}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True, name="ardupilot-json-bridge")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self.sock.close()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(256)
            except socket.timeout:
                continue
            except OSError:
                return
            reply = self.handle(data)
            if reply is not None:
                try:
                    self.sock.sendto(reply, addr)
                except OSError:
                    return

    def handle(self, data: bytes) -> bytes | None:
        """One servo packet -> the JSON reply (None for a packet that is not one)."""
        try:
            _, count, pwm = unpack_servos(data)
        except ArduPilotSitlError:
            self.counters["bad"] += 1
            return None
        with self._lock:
            if self.frame_count is not None and count == self.frame_count and self._reply is not None:
                self.counters["repeats"] += 1      # a re-sent frame: the same answer, no second step
                return self._reply
            if self.frame_count is not None and count < self.frame_count:
                self.counters["resets"] += 1       # ArduPilot restarted: it takes physics time going on
            self.frame_count = count
            self.pwm = pwm[:4].copy()
            v_before = np.asarray(self.env.state(0)["vel_enu_m_s"], float)
            self.env.step_physics(pwm_to_action(pwm).reshape(1, 4))
            self.sim_time_s += PHYSICS_DT_S
            self.counters["frames"] += 1
            s = self.env.state(0)
            if not self.crashed and float(self.env.core.drone["crashed"][0, 0]) > 0:
                self.crashed = True
                log.warning("the simulated drone crashed at t %.2f s, position ENU %s", self.sim_time_s,
                            np.round(s["pos_enu_m"], 2).tolist())
            accel_enu = (np.asarray(s["vel_enu_m_s"], float) - v_before) / PHYSICS_DT_S
            self._specific_force_flu = frames.rotate_inverse(s["quat_wxyz"], accel_enu + [0.0, 0.0, G_M_S2])
            self._reply = pack_state(self.sim_time_s, s["omega_flu_rad_s"], self._specific_force_flu, s["quat_wxyz"],
                                     s["vel_enu_m_s"], np.asarray(s["pos_enu_m"], float) - self.start_pos_enu_m)
            reply, t = self._reply, self.sim_time_s
        for fn in self._observers:
            fn(t, s)
        return reply


TRUTH_LAYOUT = (("t_s", 1), ("pos_enu_m", 3), ("vel_enu_m_s", 3), ("quat_wxyz", 4), ("omega_flu_rad_s", 3),
                ("pwm", 4), ("crashed", 1), ("frames", 1))


class BridgeProcess:
    """The bridge (and the pose forwarder, if any) in a process of its own: at 1 kHz it must not
    wait for the runner's thread to let go of the GIL (a 5 ms switch interval would slow the
    lockstep physics, and ArduPilot's clock, to a fifth of real time). `state()` reads the
    sim's truth from shared memory."""

    def __init__(self, profile: Profile, port: int, start_pos_enu_m, start_yaw_rad: float, pose=None,
                 pose_url: str | None = None):
        import multiprocessing
        ctx = multiprocessing.get_context("spawn")
        self._truth = ctx.Array("d", sum(n for _, n in TRUTH_LAYOUT), lock=False)
        self._stop, self._ready = ctx.Event(), ctx.Event()
        self._errors = ctx.Queue()
        self.process = ctx.Process(target=_bridge_main, name="ardupilot-json-bridge", daemon=True,
                                   args=(profile, port, np.asarray(start_pos_enu_m, float).tolist(), start_yaw_rad,
                                         pose, pose_url, self._truth, self._stop, self._ready, self._errors))

    def start(self, timeout_s: float = 60.0) -> None:
        self.process.start()
        deadline = time.monotonic() + timeout_s
        while not self._ready.wait(0.1):
            if not self.process.is_alive() or time.monotonic() > deadline:
                error = self._errors.get(timeout=1.0) if not self._errors.empty() else "it did not start"
                self.stop()
                raise ArduPilotSitlError(f"the JSON bridge process failed: {error}")

    def state(self) -> dict:
        values, out, i = list(self._truth), {}, 0
        for name, n in TRUTH_LAYOUT:
            out[name] = np.array(values[i:i + n]) if n > 1 else values[i]
            i += n
        out["crashed"], out["frames"] = bool(out["crashed"]), int(out["frames"])
        return out

    def stop(self) -> None:
        self._stop.set()
        if self.process.pid is None:
            return
        self.process.join(timeout=3.0)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=2.0)

    def alive(self) -> bool:
        return self.process.is_alive()


def _bridge_main(profile, port, start_pos_enu_m, start_yaw_rad, pose, pose_url, truth, stop, ready, errors) -> None:
    """The bridge process: JsonBridge, the truth into shared memory, the pose source forwarded."""
    os.dup2(2, 1)                  # pymavlink prints its reconnects: never onto the parent's stdout (fly --json)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    try:
        bridge = JsonBridge(profile, port, start_pos_enu_m, start_yaw_rad)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
        errors.put(str(exc))
        return

    def publish(t_s, s):
        values = [t_s, *s["pos_enu_m"], *s["vel_enu_m_s"], *s["quat_wxyz"], *s["omega_flu_rad_s"], *bridge.pwm,
                  float(bridge.crashed), bridge.counters["frames"]]
        truth[:] = values
    bridge.add_observer(publish)
    if pose is not None and hasattr(pose, "observe"):
        bridge.add_observer(pose.observe)
    bridge.start()
    ready.set()
    forwarder = master = None
    try:
        while pose is not None and master is None and not stop.is_set():
            if not _accepts(pose_url):
                time.sleep(0.1)
                continue
            from flight.link import mavutil
            master = mavutil.mavlink_connection(pose_url, source_system=253, autoreconnect=True)
        if master is not None:
            from flight.mocap import PoseForwarder
            forwarder = PoseForwarder(pose, master, "ardupilot").start()
        while not stop.wait(0.2) and bridge.alive():
            pass
    finally:
        if forwarder is not None:
            forwarder.stop()
        if master is not None:
            master.close()
        bridge.stop()


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


class ArduPilotSitl(Service):
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

    def stop(self) -> None:
        stop_process(self.process)
        if self.bridge is not None:
            self.bridge.stop()
        if self.workdir is not None:
            self.workdir.cleanup()
            self.workdir = None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None and (self.bridge is None or self.bridge.alive())


def _accepts(url: str) -> bool:
    """Whether the SITL's TCP port (tcp:HOST:PORT) takes a connection yet (closed again at once)."""
    host, port = url.split(":")[1:]
    try:
        socket.create_connection((host, int(port)), timeout=0.5).close()
        return True
    except OSError:
        return False


def _child_setup() -> None:
    """In the SITL's process: SIGTERM when the process that started it dies, even killed. (Its CPU
    priority is the starting process's: `fly` raises its own before it starts the vehicle.)"""
    import ctypes
    import signal
    ctypes.CDLL(None).prctl(1, int(signal.SIGTERM), 0, 0, 0)    # PR_SET_PDEATHSIG
