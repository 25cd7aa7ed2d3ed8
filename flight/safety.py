"""The safety supervisor: checks before arming and on every control tick, independent of the link.

The runner asks `preflight(...)` before it arms and `Supervisor.check(...)` once per tick, before
it sends the command. Either returns the reason to stop (a short sentence a person can act on),
never raises for a bad state; the runner then stops streaming setpoints, commands LAND and
disarms on the ground. A state is a dict in the sim's frames (ENU / FLU), as the link builds it
through skyloop/frames.py: pos_enu_m, vel_enu_m_s, quat_wxyz, omega_flu_rad_s, and t_s, the
monotonic time the telemetry arrived.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from skyloop.inputs import number


@dataclass
class Limits:
    geofence_margin_m: float = 0.5        # the course's box, shrunk by this much
    stale_telemetry_s: float = 0.25       # newest state older than this: stop
    link_timeout_s: float = 1.5           # no message at all from the vehicle for this long: stop
    max_tilt_rad: float = math.radians(70)
    max_rate_rad_s: float = 20.0          # |body rate|
    battery_critical_v_per_cell: float = 3.3
    #: ... for this long without a break: a pack sags for a moment under a punch of throttle (a racer at full
    #: thrust draws ten times its hover current) and recovers; a flat one stays low (ArduPilot: BATT_LOW_TIMER)
    battery_critical_hold_s: float = 2.0

    #: field -> (lowest, highest, unit): a limit outside its range, or NaN / inf, is refused (a NaN limit
    #: compares false with everything and would switch its check off)
    RANGES = {"geofence_margin_m": (0.0, 5.0, "m"), "stale_telemetry_s": (0.01, 2.0, "s"),
              "link_timeout_s": (0.05, 10.0, "s"), "max_tilt_rad": (0.05, math.radians(90), "rad"),
              "max_rate_rad_s": (0.5, 50.0, "rad/s"), "battery_critical_v_per_cell": (2.5, 4.2, "V"),
              "battery_critical_hold_s": (0.0, 30.0, "s")}

    def __post_init__(self):
        problems: list = []
        for name, (lo, hi, unit) in self.RANGES.items():
            number(getattr(self, name), f"safety limit {name}", problems, lo=lo, hi=hi, unit=unit)
        if problems:
            raise ValueError("; ".join(problems))


class SafetyStop(RuntimeError):
    """A failsafe fired; `reason` says which and why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def tilt_rad(quat_wxyz) -> float:
    """Angle between body z and world z."""
    w, x, y, z = (float(v) for v in quat_wxyz)
    cos_tilt = 1.0 - 2.0 * (x * x + y * y)          # R[2][2] of the unit quaternion
    return math.acos(max(-1.0, min(1.0, cos_tilt)))


def inside_fence(course, pos_enu_m, margin_m: float) -> bool:
    """Inside the course's box shrunk by margin_m on the walls and ceiling; the floor is the floor
    (a drone standing on it, or landing, is inside), with 0.2 m allowed for estimate noise."""
    p = np.asarray(pos_enu_m, float)
    lo, hi = course.bounds_min_enu_m, course.bounds_max_enu_m
    return bool(np.all(p[:2] >= lo[:2] + margin_m) and np.all(p[:2] <= hi[:2] - margin_m)
                and lo[2] - 0.2 <= p[2] <= hi[2] - margin_m)


def preflight(course, state: dict | None, battery_v: float | None, cells: int | None,
              limits: Limits = Limits()) -> list[str]:
    """Everything that must hold before arming; returns the problems (empty: go)."""
    problems = []
    if state is None:
        return ["no state estimate from the vehicle yet: check that it streams LOCAL_POSITION_NED and "
                "ATTITUDE_QUATERNION (or ODOMETRY), i.e. that its position estimate is running"]
    if not all(np.all(np.isfinite(state[k])) for k in ("pos_enu_m", "vel_enu_m_s", "quat_wxyz")):
        problems.append("the state estimate is not finite (NaN): the vehicle's estimator is not healthy")
    elif not inside_fence(course, state["pos_enu_m"], limits.geofence_margin_m):
        problems.append(f"the vehicle at {np.round(state['pos_enu_m'], 2).tolist()} m (ENU) is outside the course's "
                        f"geofence (with {limits.geofence_margin_m} m margin): move it to the start, or check the "
                        "course's origin against the vehicle's local frame")
    elif np.linalg.norm(state["vel_enu_m_s"]) > 0.5:
        problems.append("the vehicle is moving (> 0.5 m/s) before take-off: its estimate is drifting or it is in the air")
    if battery_v is not None and cells and battery_v < limits.battery_critical_v_per_cell * cells * 1.05:
        problems.append(f"battery {battery_v:.2f} V for {cells} cells is at or near critical: charge it")
    for g in course.gates:
        if not inside_fence(course, g.centre_enu_m + [0.0, 0.0, g.height_m / 2], limits.geofence_margin_m):
            problems.append(f"a gate at {g.centre_enu_m.tolist()} is within the geofence margin: widen bounds_m")
    return problems


class Supervisor:
    """Per-tick checks. `check` returns None (fly on) or the reason to stop; the first reason sticks."""

    def __init__(self, course, limits: Limits = Limits(), cells: int | None = None):
        self.course, self.limits, self.cells = course, limits, cells
        self.reason: str | None = None
        self._battery_low_since_s: float | None = None

    def check(self, now_s: float, state: dict | None, action, last_message_s: float | None,
              battery_v: float | None = None) -> str | None:
        if self.reason is None:
            self.reason = self._first_problem(now_s, state, action, last_message_s, battery_v)
        return self.reason

    def _first_problem(self, now_s, state, action, last_message_s, battery_v) -> str | None:
        lim = self.limits
        if last_message_s is None or now_s - last_message_s > lim.link_timeout_s:
            return f"link lost: no message from the vehicle for more than {lim.link_timeout_s:g} s"
        if state is None or now_s - state["t_s"] > lim.stale_telemetry_s:
            age = "never" if state is None else f"{now_s - state['t_s']:.2f} s ago"
            return f"stale telemetry: the newest state arrived {age} (limit {lim.stale_telemetry_s:g} s)"
        if not all(np.all(np.isfinite(state[k])) for k in ("pos_enu_m", "vel_enu_m_s", "quat_wxyz", "omega_flu_rad_s")):
            return "the state estimate is not finite (NaN or inf)"
        if action is not None and not np.all(np.isfinite(action)):
            return f"the policy returned a non-finite action {np.asarray(action).tolist()}"
        if not inside_fence(self.course, state["pos_enu_m"], lim.geofence_margin_m):
            return (f"geofence: position {np.round(state['pos_enu_m'], 2).tolist()} m (ENU) is outside the course's "
                    f"box less {lim.geofence_margin_m:g} m")
        tilt = tilt_rad(state["quat_wxyz"])
        if tilt > lim.max_tilt_rad:
            return f"excessive tilt: {math.degrees(tilt):.0f} deg (limit {math.degrees(lim.max_tilt_rad):.0f} deg)"
        rate = float(np.linalg.norm(state["omega_flu_rad_s"]))
        if rate > lim.max_rate_rad_s:
            return f"excessive body rate: {rate:.1f} rad/s (limit {lim.max_rate_rad_s:g} rad/s)"
        low = battery_v is not None and self.cells and battery_v < lim.battery_critical_v_per_cell * self.cells
        if not low:
            self._battery_low_since_s = None
        else:
            if self._battery_low_since_s is None:
                self._battery_low_since_s = now_s
            low_s = now_s - self._battery_low_since_s
            if low_s >= lim.battery_critical_hold_s:
                return (f"battery critical: {battery_v:.2f} V for {self.cells} cells "
                        f"(below {lim.battery_critical_v_per_cell:g} V a cell for {low_s:.1f} s)")
        return None
