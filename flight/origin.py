"""Where the course lies in the vehicle's local frame: one explicit rule, checked before arming.

A vehicle reports its position (LOCAL_POSITION_NED) relative to its own origin. With GPS, ArduPilot
and PX4 put that origin where the vehicle started (its EKF origin), so the vehicle always reports
(0, 0, 0) at the start, wherever the course's start is; under motion capture the origin is the
mocap's, and the vehicle reports course coordinates.

- `local`: the course's coordinates are the vehicle's local frame (mocap, our own simulated vehicle
  started at the course's start). The vehicle must stand within `tolerance_m` of the course's start,
  else the flight is refused, naming both positions.
- `start`: the course is placed so that its start is where the vehicle stands (GPS origin at the
  start): every gate, the box and the start move by (vehicle position - course start).
"""
from __future__ import annotations

import dataclasses

import numpy as np

RULES = ("local", "start")
TOLERANCE_M = 1.0


class CourseOriginError(ValueError):
    """The vehicle is not where the course says it starts; nothing was armed."""


def place_course(course, vehicle_pos_enu_m, rule: str, tolerance_m: float = TOLERANCE_M):
    """The course in the vehicle's local frame under `rule`, and the offset applied (ENU, m)."""
    if rule not in RULES:
        raise CourseOriginError(f"course frame {rule!r}: use one of {', '.join(RULES)}")
    vehicle = np.asarray(vehicle_pos_enu_m, float)
    start = np.asarray(course.start_pos_enu_m, float)
    if rule == "local":
        error = float(np.linalg.norm(vehicle - start))
        if not error <= tolerance_m:
            raise CourseOriginError(
                f"the vehicle reports {np.round(vehicle, 2).tolist()} m (ENU, its local frame) but the course "
                f"{course.name!r} starts at {np.round(start, 2).tolist()} m: {error:.2f} m apart (tolerance "
                f"{tolerance_m:g} m). Put the vehicle on the course's start, or, if its origin is where it started "
                "(GPS: the EKF origin), fly with --course-frame start to place the course at the vehicle")
        return course, np.zeros(3)
    offset = vehicle - start
    return shifted(course, offset), offset


def shifted(course, offset_enu_m):
    """The course moved by offset_enu_m (gates, box, start)."""
    off = np.asarray(offset_enu_m, float)
    gates = tuple(dataclasses.replace(g, centre_enu_m=np.asarray(g.centre_enu_m, float) + off) for g in course.gates)
    return dataclasses.replace(course, gates=gates, start_pos_enu_m=np.asarray(course.start_pos_enu_m, float) + off,
                               bounds_min_enu_m=np.asarray(course.bounds_min_enu_m, float) + off,
                               bounds_max_enu_m=np.asarray(course.bounds_max_enu_m, float) + off)
