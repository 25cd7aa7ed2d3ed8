"""The bridge: our C sim as the Betaflight SITL's physics, one 2 ms step per fdm_packet in
real time, and the packets it trades with the firmware (see flight/betaflight_sitl/__init__.py)."""
from __future__ import annotations

import logging
import socket
import struct
import threading
import time

import numpy as np

from flight.pose import pack_truth
from sim.core import GRAVITY_M_S2 as G_M_S2      # the C core's g: the one value
from sim.env import DroneEnv
from sim.profiles import Profile
from skyloop import frames
from flight.service import ThreadService, Worker

log = logging.getLogger(__name__)
PORT_PWM, PORT_STATE, MSP_TCP_PORT, POSE_PORT = 9002, 9003, 5761, 9005
FDM_FORMAT = "<d3d3d4d3d3dd"   # timestamp; gyro; accel; quat w x y z; velocity; position; pressure (fdm_packet order)
SERVO_FORMAT = "<4f"           # servo_packet.motor_speed[4]
FDM_SIZE, SERVO_SIZE = struct.calcsize(FDM_FORMAT), struct.calcsize(SERVO_FORMAT)
PHYSICS_DT_S = 0.002
MAX_CATCH_UP_STEPS = 25        # 50 ms: a longer stall is let go rather than replayed
# The firmware sets its clock's speed, on every state packet, to (timestamp step) / (wall time since
# the last packet), unsmoothed, whenever the step is in (0, 20 ms) (sitl.c, updateState). On a busy
# machine packets arrive unevenly, and that ratio (biased upward: E[a/b] > 1 for jittered gaps)
# races the firmware's clock until its RX times out. A constant timestamp (step 0) leaves the
# speed at its start value, 1: the firmware runs on the wall clock, as the sim does (the bridge
# steps the physics in real time), and as the MSP RC stream does.
FDM_TIMESTAMP_S = 0.0
SEA_LEVEL_PA, AIR_KG_M3 = 101325.0, 1.225


class BetaflightSitlError(OSError):
    """The Betaflight SITL could not be built or started; the message says why and what to do."""


def pack_fdm(t_s: float, omega_flu_rad_s, specific_force_flu_m_s2, quat_enu_flu, vel_enu_m_s, pos_enu_m) -> bytes:
    """The firmware's fdm_packet from the sim's frames (world ENU, body FLU)."""
    q_ned_frd = frames.quat_enu_flu_to_ned_frd(quat_enu_flu)
    pressure = SEA_LEVEL_PA - AIR_KG_M3 * G_M_S2 * float(pos_enu_m[2])
    minus_f = -np.asarray(specific_force_flu_m_s2, float)
    return struct.pack(FDM_FORMAT, t_s, *frames.flu_to_frd(omega_flu_rad_s), *minus_f, *q_ned_frd,
                       *frames.enu_to_ned(vel_enu_m_s), *frames.enu_to_ned(pos_enu_m), pressure)


def unpack_fdm(data: bytes) -> dict:
    """The inverse of pack_fdm (for tests and tools), back in the sim's frames."""
    if len(data) != FDM_SIZE:
        raise BetaflightSitlError(f"fdm_packet of {len(data)} bytes, expected {FDM_SIZE}")
    v = np.array(struct.unpack(FDM_FORMAT, data))
    return {"t_s": v[0], "omega_flu_rad_s": frames.frd_to_flu(v[1:4]), "specific_force_flu_m_s2": -v[4:7],
            "quat_enu_flu": frames.quat_ned_frd_to_enu_flu(v[7:11]), "vel_enu_m_s": frames.ned_to_enu(v[11:14]),
            "pos_enu_m": frames.ned_to_enu(v[14:17]), "pressure_pa": v[17]}


def unpack_servo(data: bytes) -> np.ndarray:
    """servo_packet -> motor outputs 0..1, in the sim's motor order (the firmware reorders them)."""
    if len(data) != SERVO_SIZE:
        raise BetaflightSitlError(f"servo_packet of {len(data)} bytes, expected {SERVO_SIZE}")
    return np.clip(np.array(struct.unpack(SERVO_FORMAT, data), float), 0.0, 1.0)


class SitlBridge(ThreadService):
    """Our sim as the firmware's physics: one 2 ms step per fdm_packet, in real time, in a thread."""

    def __init__(self, profile: Profile, start_pos_enu_m=(0.0, 0.0, 0.0), start_yaw_rad: float = 0.0,
                 pose_port: int = POSE_PORT, reply_timeout_s: float = PHYSICS_DT_S):
        self.env = DroneEnv(1, profile.nominal(), action_mode="motor", randomize=False,
                            task={"bounds_m": [1e4, 1e4, 1e4], "episode_s": 1e5, "physics_dt_s": PHYSICS_DT_S,
                                  "control_hz": 1.0 / PHYSICS_DT_S})
        self.env.reset(seed=0)
        self.env.set_state(0, pos_enu_m=start_pos_enu_m, vel_enu_m_s=[0, 0, 0], omega_flu_rad_s=[0, 0, 0],
                           quat_wxyz=frames.quat_from_axis_angle([0, 0, 1], start_yaw_rad), rotor_rad_s=[0, 0, 0, 0])
        self.pose_port, self.reply_timeout_s = pose_port, reply_timeout_s
        self.motors = np.zeros(4)                 # the firmware's newest outputs, sim order
        self.sim_time_s = 0.0
        self.counters = {"steps": 0, "replies": 0, "late": 0, "bad": 0, "slipped_s": 0.0}
        self._specific_force_flu = np.array([0.0, 0.0, G_M_S2])
        self._lock = threading.Lock()
        self._worker = Worker(self._run, "betaflight-bridge")
        self._stop = self._worker.stop_event
        self._pwm = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._pwm.bind(("127.0.0.1", PORT_PWM))
        except OSError as exc:
            raise BetaflightSitlError(f"udp port {PORT_PWM} (the firmware's motor outputs) is taken ({exc}): another "
                                      "Betaflight SITL bridge runs on this machine; stop it") from None
        self._out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def state(self) -> dict:
        with self._lock:
            return {**self.env.state(0), "t_s": self.sim_time_s, "motors": self.motors.copy()}

    def release(self) -> None:
        self._pwm.close()
        self._out.close()

    def _run(self) -> None:
        """Real time without bursts: when the thread wakes late it owes several 2 ms steps; it
        integrates all of them (with the motor outputs it has) and sends ONE state packet, so the
        firmware never sees packets queued back to back. More than MAX_CATCH_UP_S behind (a stall),
        it lets the wall clock go and counts the time in `counters["slipped_s"]`."""
        t0 = time.monotonic()
        while not self._stop.is_set():
            owed = int((time.monotonic() - t0) / PHYSICS_DT_S) - self.counters["steps"]
            if owed <= 0:
                time.sleep(max(0.0, t0 + (self.counters["steps"] + 1) * PHYSICS_DT_S - time.monotonic()))
                continue
            if owed > MAX_CATCH_UP_STEPS:
                t0 += (owed - MAX_CATCH_UP_STEPS) * PHYSICS_DT_S
                self.counters["slipped_s"] += (owed - MAX_CATCH_UP_STEPS) * PHYSICS_DT_S
                owed = MAX_CATCH_UP_STEPS
            self.exchange()
            self.advance(owed)

    def exchange(self) -> None:
        """Sends the state; takes the firmware's answer to it (or, past reply_timeout_s, keeps the
        last one: counted in `late`)."""
        with self._lock:
            s = self.env.state(0)
            fdm = pack_fdm(FDM_TIMESTAMP_S, s["omega_flu_rad_s"], self._specific_force_flu, s["quat_wxyz"],
                           s["vel_enu_m_s"], s["pos_enu_m"])
        self._out.sendto(fdm, ("127.0.0.1", PORT_STATE))
        self._pwm.settimeout(self.reply_timeout_s)
        replies = 0
        try:
            while True:                            # the newest reply; older ones are stale
                self.motors = unpack_servo(self._pwm.recv(64))
                replies += 1
                self._pwm.settimeout(0.0)
        except (BlockingIOError, socket.timeout):
            pass
        except BetaflightSitlError:
            self.counters["bad"] += 1
        self.counters["replies"] += replies
        self.counters["late"] += replies == 0

    def advance(self, steps: int = 1) -> None:
        """`steps` physics steps of 2 ms with the newest motor outputs; then the pose to the pose port."""
        with self._lock:
            for _ in range(steps):
                v_before = np.asarray(self.env.state(0)["vel_enu_m_s"], float)
                self.env.step_physics((2.0 * self.motors - 1.0).reshape(1, 4))
                self.sim_time_s += PHYSICS_DT_S
                self.counters["steps"] += 1
            s = self.env.state(0)
        accel_enu = (np.asarray(s["vel_enu_m_s"], float) - v_before) / PHYSICS_DT_S
        self._specific_force_flu = frames.rotate_inverse(s["quat_wxyz"], accel_enu + [0.0, 0.0, G_M_S2])
        rpm = np.asarray(s["rotor_rad_s"], float) * 60.0 / (2 * np.pi)
        self._out.sendto(pack_truth(time.monotonic(), s["pos_enu_m"], s["vel_enu_m_s"], s["quat_wxyz"],
                                    s["omega_flu_rad_s"], rpm), ("127.0.0.1", self.pose_port))
