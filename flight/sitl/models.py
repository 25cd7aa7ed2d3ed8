"""What the simulated vehicle (flight/sitl/) adds around the sim: the battery, the realism
knobs (sensor noise and bias, telemetry latency and loss, wind and gusts) and the autopilot's
own small controllers (attitude P loop, velocity loop for LAND, stopping and climb rates), all in the
sim's frames (world ENU, body FLU).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from sim.core import GRAVITY_M_S2 as G_M_S2      # the C core's g: the one value
from skyloop import frames

ATTITUDE_KP_PER_S = 4.0          # attitude error [rad] -> body rate [rad/s]; inside the rate loop's bandwidth
TILT_MAX_RAD = math.radians(25)  # the velocity hold never leans further


# ---------------------------------------------------------------------------------------- realism
class RealismError(ValueError):
    """A --noise setting that is not one of the known names with a number."""


@dataclasses.dataclass
class Realism:
    """Realism knobs; all zero is the perfect vehicle. Noise figures are standard deviations."""
    gyro_noise_rad_s: float = 0.0     # white noise on body rates (ATTITUDE*, ODOMETRY, HIGHRES_IMU)
    gyro_bias_rad_s: float = 0.0      # a constant bias per axis, drawn once at start
    accel_noise_m_s2: float = 0.0     # white noise on HIGHRES_IMU's specific force
    pos_noise_m: float = 0.0          # position estimate noise (LOCAL_POSITION_NED, ODOMETRY)
    vel_noise_m_s: float = 0.0        # velocity estimate noise
    att_noise_rad: float = 0.0        # attitude estimate noise (a small random rotation)
    latency_s: float = 0.0            # telemetry delay (streams only; replies to commands are immediate)
    drop: float = 0.0                 # probability that a streamed message is lost
    wind_e_m_s: float = 0.0           # mean wind, ENU [m/s] (acts through the drone's linear drag)
    wind_n_m_s: float = 0.0
    wind_u_m_s: float = 0.0
    gust_m_s: float = 0.0             # gust strength (Ornstein-Uhlenbeck, vertical at a third of it)
    gust_tau_s: float = 2.0           # gust correlation time

    PRESETS = {"none": {}, "real": {"gyro_noise_rad_s": 0.005, "gyro_bias_rad_s": 0.005, "accel_noise_m_s2": 0.1,
                                    "pos_noise_m": 0.01, "vel_noise_m_s": 0.03, "att_noise_rad": 0.005,
                                    "latency_s": 0.01, "drop": 0.02, "gust_m_s": 0.5}}

    @classmethod
    def parse(cls, text: str | None) -> "Realism":
        """`real`, `none`, or NAME=VALUE pairs separated by commas, after an optional preset:
        e.g. `real,drop=0.1` or `gyro_noise_rad_s=0.01,latency_s=0.02`."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in (text or "").split(","))):
            if part in cls.PRESETS:
                values.update(cls.PRESETS[part])
                continue
            name, sep, value = part.partition("=")
            name = name.strip()
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            negative = number < 0 and not name.startswith("wind")      # only the wind has a direction
            if not sep or name not in fields or not math.isfinite(number) or negative:
                raise RealismError(f"--noise {part!r}: use a preset ({', '.join(cls.PRESETS)}) or NAME=VALUE with a "
                                   f"non-negative number, NAME one of {', '.join(sorted(fields))}")
            values[name] = number
        realism = cls(**values)
        if realism.drop > 1.0 or realism.gust_tau_s <= 0:
            raise RealismError("--noise: drop must be at most 1 and gust_tau_s positive")
        return realism

    @property
    def wind_enu_m_s(self) -> np.ndarray:
        return np.array([self.wind_e_m_s, self.wind_n_m_s, self.wind_u_m_s])


class Gusts:
    """Wind gust velocity, ENU [m/s]: an Ornstein-Uhlenbeck process per axis, seeded."""

    def __init__(self, strength_m_s: float, tau_s: float, rng: np.random.Generator):
        self.sigma = strength_m_s * np.array([1.0, 1.0, 1.0 / 3.0])
        self.tau_s, self.rng = tau_s, rng
        self.v = np.zeros(3)

    def step(self, dt: float) -> np.ndarray:
        if self.sigma[0] > 0:
            self.v += -self.v * dt / self.tau_s + self.sigma * math.sqrt(2 * dt / self.tau_s) * self.rng.normal(size=3)
        return self.v


# ---------------------------------------------------------------------------------------- battery
class Battery:
    """A LiPo pack: open-circuit voltage from the state of charge, sag from the load, capacity.

    Cells: battery_v_nominal / 3.7 V. What the vehicle reports is a real pack: 4.20 V per cell
    charged, 3.27 V empty, minus the internal resistance times the current. What the sim's
    motors feel is the same voltage relative to the charged pack at rest, which the profile's
    battery_v_nominal (the reference of its throttle curve and top speed) stands for; an empty
    pack (3.7 V per cell at 10 %) then gives 88 %, inside the band the sim's randomization trains
    over. The resistance makes the pack sag by `sag_at_hover` (4 %) at hover; the current is the
    rotors' mechanical power (km * omega^3 each) over a 70 % efficient drive. The default capacity
    stores 150 Wh/kg in a quarter of the take-off mass (a Crazyflie gets ~270 mAh, a 1.5 kg quad
    ~3800 mAh at 4S).
    """
    SOC = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)
    OCV_PER_CELL_V = (3.27, 3.61, 3.69, 3.73, 3.77, 3.84, 3.95, 4.11, 4.20)
    EFFICIENCY = 0.7

    def __init__(self, params: dict, soc: float = 1.0, capacity_mah: float | None = None,
                 sag_at_hover: float = 0.04):
        v_nominal = float(params["battery_v_nominal"])
        self.cells = max(1, round(v_nominal / 3.7))
        self.v_full = self.cells * self.OCV_PER_CELL_V[-1]
        self.km = float(params["km_nm_per_rad2s2"])
        self.capacity_mah = capacity_mah or 1000.0 * 0.25 * params["mass_kg"] * 150.0 / v_nominal
        omega_hover = math.sqrt(params["mass_kg"] * G_M_S2 / (4 * params["kf_n_per_rad2s2"]))
        self.hover_current_a = self.current_a(np.full(4, omega_hover))
        self.r_ohm = sag_at_hover * self.v_full / self.hover_current_a
        self.soc = float(np.clip(soc, 0.0, 1.0))
        self.consumed_mah = 0.0
        self.load_a = 0.0

    def current_a(self, rotor_rad_s) -> float:
        power_w = self.km * float(np.sum(np.abs(np.asarray(rotor_rad_s, float)) ** 3))
        return power_w / (self.EFFICIENCY * self.cells * 3.7)

    def step(self, rotor_rad_s, dt: float) -> None:
        self.load_a = self.current_a(rotor_rad_s)
        used = self.load_a * dt / 3.6                      # mAh
        self.consumed_mah += used
        self.soc = max(0.0, self.soc - used / self.capacity_mah)

    @property
    def voltage_v(self) -> float:
        """Terminal voltage under the present load."""
        return self.cells * float(np.interp(self.soc, self.SOC, self.OCV_PER_CELL_V)) - self.r_ohm * self.load_a

    @property
    def sim_ratio(self) -> float:
        """The voltage the motors see, relative to the charged pack at rest (the profile's nominal)."""
        return max(0.0, self.voltage_v / self.v_full)


# ---------------------------------------------------------------------------------------- control
def attitude_rates(q_now, q_target, kp_per_s: float = ATTITUDE_KP_PER_S) -> np.ndarray:
    """Body rates (FLU) that turn attitude q_now towards q_target (both body -> world ENU)."""
    err = frames.quat_multiply(frames.quat_conjugate(q_now), q_target)
    if err[0] < 0:
        err = -err
    return 2.0 * kp_per_s * np.asarray(err[1:])


def level_attitude(q_now, up_enu) -> np.ndarray:
    """The attitude with body z along `up_enu` and the heading of q_now."""
    _, _, yaw = frames.quat_to_euler_rpy(q_now)
    q_yaw = frames.quat_from_axis_angle([0, 0, 1], yaw)
    up_in_yaw = frames.rotate_inverse(q_yaw, np.asarray(up_enu, float) / np.linalg.norm(up_enu))
    tilt = math.acos(max(-1.0, min(1.0, up_in_yaw[2])))
    q_tilt = frames.quat_from_axis_angle(np.cross([0.0, 0.0, 1.0], up_in_yaw), tilt)
    return frames.quat_multiply(q_yaw, q_tilt)


class VelocityController:
    """The autopilot's velocity loop, used by LAND, the failsafes and ArduPilot's climb-rate
    reading of the thrust field: P on the velocity error, plus an integral on the vertical one
    (drag and a thrust-curve mismatch would otherwise leave a steady error); the horizontal loop
    is slower, outside the attitude and rate loops it leans through. reset() when unused."""
    KP_HORIZONTAL_PER_S = 1.0
    KP_VERTICAL_PER_S = 4.0
    KI_VERTICAL_PER_S2 = 4.0
    INTEGRAL_LIMIT_M_S2 = 3.0

    def __init__(self, dt_s: float):
        self.dt_s = dt_s
        self.integral = 0.0

    def reset(self) -> None:
        self.integral = 0.0

    def _vertical(self, climb_error_m_s: float) -> float:
        self.integral = float(np.clip(self.integral + self.KI_VERTICAL_PER_S2 * climb_error_m_s * self.dt_s,
                                      -self.INTEGRAL_LIMIT_M_S2, self.INTEGRAL_LIMIT_M_S2))
        return self.KP_VERTICAL_PER_S * climb_error_m_s + self.integral

    def hold(self, state: dict, v_target_enu, hover_frac: float, brake_horizontal: bool = True
             ) -> tuple[float, np.ndarray]:
        """(thrust fraction, body rates FLU) that fly the velocity v_target_enu; without
        brake_horizontal only the vertical speed is held, level."""
        v = np.asarray(state["vel_enu_m_s"], float)
        target = np.asarray(v_target_enu, float)
        accel = np.zeros(3)
        if brake_horizontal:
            accel[:2] = self.KP_HORIZONTAL_PER_S * (target[:2] - v[:2])
        accel[2] = self._vertical(target[2] - v[2])
        limit = G_M_S2 * math.tan(TILT_MAX_RAD)
        horizontal = np.linalg.norm(accel[:2])
        if horizontal > limit:
            accel[:2] *= limit / horizontal
        force = accel + [0.0, 0.0, G_M_S2]                # specific force wanted, ENU
        force[2] = max(force[2], 0.2 * G_M_S2)
        q = np.asarray(state["quat_wxyz"], float)
        rates = attitude_rates(q, level_attitude(q, force))
        body_up = frames.rotate(q, [0.0, 0.0, 1.0])
        thrust = hover_frac * max(0.0, float(np.dot(force, body_up))) / G_M_S2
        return float(np.clip(thrust, 0.0, 1.0)), rates

    def climb_thrust(self, state: dict, climb_m_s: float, hover_frac: float) -> float:
        """The thrust fraction that flies a climb rate at the present attitude."""
        q = np.asarray(state["quat_wxyz"], float)
        accel_up = self._vertical(climb_m_s - float(state["vel_enu_m_s"][2]))
        up_z = max(0.3, frames.rotate(q, [0.0, 0.0, 1.0])[2])
        return float(np.clip(hover_frac * (1.0 + accel_up / G_M_S2) / up_z, 0.0, 1.0))
