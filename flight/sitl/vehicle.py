"""The simulated vehicle's state machine, with no I/O: modes, arming, setpoints, failsafes, the
sim stepped one control period at a time. flight/sitl/mavlink_io.py puts MAVLink around it;
flight/sitl/clock.py decides when it steps. See flight/sitl/__init__.py for the behaviour."""
from __future__ import annotations

import dataclasses
import logging
import math
import threading

import numpy as np

from flight.sitl.models import Battery, Gusts, Realism, VelocityController, attitude_rates
from sim.env import DroneEnv
from sim.profiles import Profile, load_profile
from skyloop import frames
from skyloop.autopilot import LANDING, MODES, OFFBOARD_MODES, STARTING, mode_name

log = logging.getLogger(__name__)
#: ArduCopter after arming: motors stopped ARMING_DELAY_SEC (2 s, compiled in), then ground idle at
#: MOT_SPIN_ARM and the thrust spooled up over MOT_SPOOL_TIME (0.5 s); `arming_delay_s` > 0 imitates it
ARDUPILOT_ARMING_DELAY_S, SPIN_ARM, SPOOL_TIME_S = 2.0, 0.1, 0.5
LAND_DISARM_S = 1.0                   # standing on the ground in LAND this long -> disarm
LANDED_DISARM_S = 10.0                # ArduPilot DISARM_DELAY, PX4 COM_DISARM_PRFLT
PX4_STREAM_BEFORE_OFFBOARD_S = 0.5
BATTERY_CRITICAL_FRAC = 0.07
SEVERITY_CRITICAL, SEVERITY_INFO = 2, 6    # MAVLink MAV_SEVERITY of the status texts


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


#: the range each parameter may take (as on the real autopilots, roughly); a PARAM_SET outside it is
#: refused: LAND_SPEED -300 would climb, GUID_TIMEOUT 1e30 would switch the setpoint failsafe off
PARAM_RANGES = {
    "SYSID_THISMAV": (1, 255), "GUID_OPTIONS": (0, 65535), "GUID_TIMEOUT": (0.05, 5.0), "MOT_THST_HOVER": (0.1, 0.8),
    "WPNAV_SPEED_UP": (10.0, 1000.0), "WPNAV_SPEED_DN": (10.0, 500.0), "LAND_SPEED": (30.0, 200.0),
    "DISARM_DELAY": (0.0, 127.0), "BATT_CAPACITY": (0.0, 1e6), "BATT_CRT_MAH": (0.0, 1e6),
    "MAV_SYS_ID": (1, 250), "COM_OF_LOSS_T": (0.05, 60.0), "COM_OBL_RC_ACT": (0, 7), "MPC_THR_HOVER": (0.1, 0.8),
    "MPC_LAND_SPEED": (0.2, 3.0), "COM_DISARM_LAND": (-1.0, 20.0), "BAT1_CAPACITY": (-1.0, 1e6),
    "BAT_CRIT_THR": (0.05, 0.5),
    # what this vehicle is and cannot change: no angle boost, one fixed spool-up time
    "ATC_ANGLE_BOOST": (0, 0), "MOT_SPOOL_TIME": (SPOOL_TIME_S, SPOOL_TIME_S)}
SETPOINT_TIMEOUT_RANGE_S = (0.05, 5.0)
ORIGINS = ("course", "start")          # where the reported local position has its (0, 0, 0)


def param_problem(name: str, value: float) -> str | None:
    """Why `name = value` is refused (None: it is fine): unknown, not finite, or outside PARAM_RANGES."""
    if name not in PARAM_RANGES:
        return f"unknown parameter {name!r}"
    lo, hi = PARAM_RANGES[name]
    if not (math.isfinite(value) and lo <= value <= hi):
        return f"{name} {value:g} is outside {lo:g}..{hi:g}"
    return None


def default_params(autopilot: str, hover_frac: float, timeout_s: float, capacity_mah: float) -> dict:
    if autopilot == "px4":
        return {"MAV_SYS_ID": 1.0, "COM_OF_LOSS_T": timeout_s, "COM_OBL_RC_ACT": 4.0, "MPC_THR_HOVER": hover_frac,
                "MPC_LAND_SPEED": 0.7, "COM_DISARM_LAND": LAND_DISARM_S, "BAT1_CAPACITY": capacity_mah,
                "BAT_CRIT_THR": BATTERY_CRITICAL_FRAC}
    return {"SYSID_THISMAV": 1.0, "GUID_OPTIONS": 8.0, "GUID_TIMEOUT": timeout_s, "MOT_THST_HOVER": hover_frac,
            "WPNAV_SPEED_UP": 250.0, "WPNAV_SPEED_DN": 150.0, "LAND_SPEED": 50.0, "DISARM_DELAY": LANDED_DISARM_S,
            "BATT_CAPACITY": capacity_mah, "BATT_CRT_MAH": BATTERY_CRITICAL_FRAC * capacity_mah,
            "ATC_ANGLE_BOOST": 0.0, "MOT_SPOOL_TIME": SPOOL_TIME_S}

#: on setpoint loss: ArduPilot's GUID_TIMEOUT levels and holds altitude in the mode; PX4 (COM_OBL_ACT 0, no RC) lands
DEFAULT_LOSS_ACTION = {"ardupilot": "hold", "px4": "land"}


class Vehicle:
    """The vehicle without I/O. Attributes safe to read from other threads: armed, mode, failsafe,
    failsafe_t_s, sim_time_s, params (a dict; writing a value changes the vehicle)."""

    def __init__(self, profile: str | Profile = "crazyflie21", autopilot: str = "ardupilot",
                 start_pos_enu_m=(0.0, 0.0, 0.0), start_yaw_rad: float = 0.0,
                 speed: float = 1.0, setpoint_timeout_s: float = 0.5, seed: int = 0, *, lockstep: bool = False,
                 realism: Realism | str | None = None, loss_action: str | None = None, battery_soc: float = 1.0,
                 randomize: bool = False, arming_delay_s: float = 0.0, origin: str = "start"):
        if origin not in ORIGINS:
            raise SitlError(f"origin must be one of {', '.join(ORIGINS)}, got {origin!r}")
        # LOCAL_POSITION_NED / ODOMETRY are reported relative to this point (ENU): "start" (the default),
        # where the vehicle starts (ArduPilot's and PX4's EKF origin with GPS), or "course", the sim's
        # world frame, i.e. the course's (motion capture indoors)
        self.origin = origin
        self.origin_enu_m = np.asarray(start_pos_enu_m, float).copy() if origin == "start" else np.zeros(3)
        if not (math.isfinite(arming_delay_s) and 0.0 <= arming_delay_s <= 10.0):
            raise SitlError(f"arming_delay_s must be a number of seconds in 0..10, got {arming_delay_s!r}")
        self.arming_delay_s = float(arming_delay_s)
        if autopilot not in MODES:
            raise SitlError(f"autopilot must be ardupilot or px4, got {autopilot!r}")
        if loss_action is None:                 # what each does by default when the offboard stream stops
            loss_action = DEFAULT_LOSS_ACTION.get(autopilot)
        if loss_action not in ("land", "hold"):
            raise SitlError(f"loss_action must be land or hold, got {loss_action!r}")
        if not (math.isfinite(speed) and speed > 0):
            raise SitlError(f"speed must be a positive number (or use lockstep), got {speed!r}")
        if not float(start_pos_enu_m[2]) >= 0.0:
            raise SitlError("the start position must be on or above the ground (z >= 0)")
        lo, hi = SETPOINT_TIMEOUT_RANGE_S
        if not (math.isfinite(setpoint_timeout_s) and lo <= setpoint_timeout_s <= hi):
            raise SitlError(f"setpoint_timeout_s must be a number of seconds in {lo:g}..{hi:g} (the setpoint "
                            f"failsafe), got {setpoint_timeout_s!r}")
        if not (math.isfinite(battery_soc) and 0.0 <= battery_soc <= 1.0):
            raise SitlError(f"battery_soc (state of charge) must be a number in 0..1, got {battery_soc!r}")
        self.profile = profile if isinstance(profile, Profile) else load_profile(profile)
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
        # that motor mode folds into it (ctbr's rate loop compensates the battery); see sim/c/env.h, randomization
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
        self.texts: list[tuple[int, str]] = []            # status texts (severity, text) nobody sent
        self.sim_time_s = 0.0
        self.steps = 0
        self.failsafe: str | None = None                  # the newest failsafe's reason
        self.failsafe_t_s: float | None = None            # its sim time
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
        self._lock = threading.RLock()

    @property
    def env(self) -> DroneEnv:
        return self.envs[self.action_mode]

    @property
    def mode(self) -> str:
        return mode_name(self.autopilot, self.custom_mode)

    def _mode_name(self) -> str:              # the older name tests/test_fly.py still calls; use .mode
        return self.mode

    @property
    def setpoint_timeout_s(self) -> float:
        return float(self.params["COM_OF_LOSS_T" if self.autopilot == "px4" else "GUID_TIMEOUT"])

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

    # ------------------------------------------------------------------ commands (True: accepted)
    def arm(self) -> bool:
        if self.armed:
            return True
        mode = self.mode
        if mode == LANDING[self.autopilot] or self.battery.soc <= BATTERY_CRITICAL_FRAC:
            return False
        if self.autopilot == "px4" and mode == "OFFBOARD" and not self._stream_alive():
            return False
        self.armed, self._armed_since_s, self._loss_fired = True, self.sim_time_s, False
        self._motor_test = self._hold = None
        self._ground_since_s = None
        log.info("armed in %s", mode)
        return True

    def disarm(self, force: bool = False) -> bool:
        """On the ground, or anywhere when forced; refused in the air."""
        s = self.env.state(0)
        if s["pos_enu_m"][2] < self.ground_z_m + 0.1 or force:
            if self.armed:
                self._disarm("disarmed by command")
            return True
        return False

    def motor_test(self, motor: int, throttle: float, timeout_s: float) -> bool:
        """Spins one motor (sim index 0..3) at a throttle 0..1 for timeout_s (at most 30 s), disarmed only."""
        if self.armed or not 0 <= motor <= 3 or not 0 < timeout_s <= 30 or not 0.0 <= throttle <= 1.0:
            return False
        self._motor_test = (motor, throttle, self.sim_time_s + timeout_s)
        return True

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

    def _stream_alive(self) -> bool:
        last = self._last_setpoint_msg_s
        return (last is not None and self.sim_time_s - last <= self.setpoint_timeout_s
                and self.sim_time_s - self._stream_since_s >= PX4_STREAM_BEFORE_OFFBOARD_S - 1e-9)

    def _accept(self, sp: Setpoint) -> None:
        self._setpoint, self._hold, self._last_valid_s, self._loss_fired = sp, None, sp.t_s, False

    def _note_stream(self) -> None:
        """Any setpoint message, flown or not, keeps the setpoint stream alive (PX4 wants one before OFFBOARD)."""
        last = self._last_setpoint_msg_s
        if last is None or self.sim_time_s - last > self.setpoint_timeout_s:
            self._stream_since_s = self.sim_time_s
        self._last_setpoint_msg_s = self.sim_time_s

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
        if not self.motors_live:              # disarmed, or armed within the arming delay: motors stopped
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
        if self.arming_delay_s > 0:           # spooling up after the arming delay: thrust ramps in
            thrust *= min(1.0, (self.sim_time_s - self._armed_since_s - self.arming_delay_s) / SPOOL_TIME_S)
        return self._ctbr(thrust, rates), "ctbr"

    @property
    def motors_live(self) -> bool:
        """Armed and past the arming delay: the motors spin (at least at ground idle)."""
        return self.armed and self.sim_time_s - self._armed_since_s >= self.arming_delay_s

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
        self._text(SEVERITY_INFO, why)

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
        self._text(SEVERITY_CRITICAL, f"Failsafe: {reason}")

    def _failsafe_active(self) -> bool:
        return self._hold is not None or self.mode == LANDING[self.autopilot]

    def _text(self, severity: int, text: str) -> None:
        """A status text for the ground station: the MAVLink side sends it; alone, it is kept in .texts."""
        self.texts.append((severity, text))
