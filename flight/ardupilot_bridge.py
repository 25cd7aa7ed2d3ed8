"""Our C sim as ArduPilot's physics: its JSON backend (`--model JSON`), in a process of its own.

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
import threading
import time

import numpy as np

from sim.core import GRAVITY_M_S2 as G_M_S2
from sim.env import DroneEnv
from sim.profiles import Profile
from skyloop import frames
from flight.service import ThreadService, Worker

log = logging.getLogger(__name__)
SERVO_MAGIC_16, SERVO_MAGIC_32 = 18458, 29569
SERVO_HEADER = "<HHI"
SERVO_HEADER_SIZE = struct.calcsize(SERVO_HEADER)
PHYSICS_DT_S = 0.001            # 1 kHz physics frames (ArduCopter's default SIM_RATE_HZ is 1200, its loop 400 Hz)
SLOW_FRAME_S = 0.05             # a lockstep turn this long (wall time) is recorded: whose turn, how long, when


class BridgeError(OSError):
    """The bridge could not start or read a packet; the message says why."""


# ------------------------------------------------------------------------------------ packets
def unpack_servos(data: bytes) -> tuple[int, int, np.ndarray]:
    """A servo packet -> (frame rate Hz, frame count, pwm us for all its channels)."""
    if len(data) < SERVO_HEADER_SIZE:
        raise BridgeError(f"servo packet of {len(data)} bytes, shorter than its header")
    magic, rate_hz, count = struct.unpack_from(SERVO_HEADER, data)
    channels = {SERVO_MAGIC_16: 16, SERVO_MAGIC_32: 32}.get(magic)
    if channels is None or len(data) != SERVO_HEADER_SIZE + 2 * channels:
        raise BridgeError(f"not an ArduPilot servo packet (magic {magic}, {len(data)} bytes)")
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
class JsonBridge(ThreadService):
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
        # lockstep turns over SLOW_FRAME_S: (sim time s, "firmware" (servo packet awaited) or "bridge", wall s)
        self.slow_turns: list[tuple[float, str, float]] = []
        self.crashed = False
        self._specific_force_flu = np.array([0.0, 0.0, G_M_S2])
        self._reply: bytes | None = None
        self._lock = threading.Lock()
        self._worker = Worker(self._run, "ardupilot-json-bridge")
        self._stop = self._worker.stop_event
        self._observers: list = []                 # called with (sim_time_s, truth) after each step
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.bind(("127.0.0.1", port))
        except OSError as exc:
            self.sock.close()
            raise BridgeError(f"udp port {port} (ArduPilot's JSON servo packets) is taken: {exc}") from None
        self.sock.settimeout(0.2)
        self.port = port

    def add_observer(self, fn) -> None:
        """fn(sim_time_s, truth) after every physics step (in the bridge's thread): a simulated
        motion capture reads the truth here (flight/mocap.py)."""
        self._observers.append(fn)

    def state(self) -> dict:
        with self._lock:
            return {**self.env.state(0), "t_s": self.sim_time_s, "pwm": self.pwm.copy()}

    def release(self) -> None:
        self.sock.close()

    def _run(self) -> None:
        replied_s = None
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(256)
            except socket.timeout:
                continue
            except OSError:
                return
            received_s = time.monotonic()
            if replied_s is not None:
                self._timed("firmware", received_s - replied_s)
            reply = self.handle(data)
            if reply is not None:
                try:
                    self.sock.sendto(reply, addr)
                except OSError:
                    return
            replied_s = time.monotonic()
            self._timed("bridge", replied_s - received_s)

    def _timed(self, whose: str, seconds: float) -> None:
        if seconds > SLOW_FRAME_S and len(self.slow_turns) < 1000:
            self.slow_turns.append((self.sim_time_s, whose, seconds))

    def slow_turns_text(self) -> str:
        """The slow lockstep turns in words: how many were whose, the longest, the first few."""
        parts = []
        for whose, what in (("firmware", "the firmware's (the servo packet awaited)"), ("bridge", "the bridge's")):
            turns = [(t, s) for t, who, s in self.slow_turns if who == whose]
            if turns:
                t, s = max(turns, key=lambda ts: ts[1])
                parts.append(f"{len(turns)} of {what}, longest {s:.3f} s at sim time {t:.2f} s")
        first = [(round(t, 2), who, round(s, 3)) for t, who, s in self.slow_turns[:8]]
        return (f"lockstep turns over {SLOW_FRAME_S:g} s of wall time: " + "; ".join(parts)
                + f"; the first (sim time s, whose, wall s): {first}")

    def handle(self, data: bytes) -> bytes | None:
        """One servo packet -> the JSON reply (None for a packet that is not one)."""
        try:
            _, count, pwm = unpack_servos(data)
        except BridgeError:
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
    lockstep physics, and ArduPilot's clock, to a fifth of real time). It runs real time where
    allowed (flight/realtime.py), as the firmware does: the pair waits on each other 1000 times a
    second, and at normal priority on a busy machine one wait took 0.28 s (fly's runner then saw
    no state for longer than its limit). `state()` reads the sim's truth from shared memory."""

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
                raise BridgeError(f"the JSON bridge process failed: {error}")

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
    from flight.realtime import raise_priority
    raise_priority()               # lockstep: each of its turns holds up the firmware (see BridgeProcess)
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
        if bridge.slow_turns:
            log.warning("%s", bridge.slow_turns_text())


def _accepts(url: str) -> bool:
    """Whether the SITL's TCP port (tcp:HOST:PORT) takes a connection yet (closed again at once)."""
    host, port = url.split(":")[1:]
    try:
        socket.create_connection((host, int(port)), timeout=0.5).close()
        return True
    except OSError:
        return False
