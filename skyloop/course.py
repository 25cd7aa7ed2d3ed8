"""Courses: a geofence box, a start, gates and laps (world frame ENU), read from JSON.

    {"format": "skyloop.course/1", "name": "hall",
     "bounds_m": {"min": [-20, -12.5, 0], "max": [20, 12.5, 8]},
     "start": {"pos_enu_m": [-14, -8, 0], "yaw_deg": 0},
     "laps": 1,
     "gates": [{"centre_enu_m": [-6, -8, 1.8], "yaw_deg": 0, "inner_size_m": 1.5}, ...]}

A gate's `yaw_deg` is the direction of flight through it (its normal), counter-clockwise from
east; `inner_size_m` is the side of its square opening (or [width, height]).

The course model, in the base layer (pure Python): the sim races it (sim/env.py), the runner
flies it (flight/course.py: gate passes and the sliding target), calibration replays it. The
built-in courses are skyloop/courses/*.json.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from skyloop.inputs import number, read_json

FORMAT = "skyloop.course/1"
COURSES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "courses")


class CourseError(ValueError):
    """A course file that cannot be flown: names every problem and the fix."""


@dataclass(frozen=True)
class Gate:
    centre_enu_m: np.ndarray       # (3,)
    normal_enu: np.ndarray         # (3,) unit, horizontal: the direction of flight through the gate
    width_m: float
    height_m: float


@dataclass(frozen=True)
class Course:
    name: str
    bounds_min_enu_m: np.ndarray
    bounds_max_enu_m: np.ndarray
    start_pos_enu_m: np.ndarray
    start_yaw_rad: float
    gates: tuple
    laps: int
    path: str | None = None

    def waypoints(self) -> np.ndarray:
        """The polyline flown: the start (lifted to the first gate's height), then every gate of every lap."""
        first = self.gates[0].centre_enu_m
        lift = np.array([self.start_pos_enu_m[0], self.start_pos_enu_m[1], first[2]])
        points = [lift] + [g.centre_enu_m for _ in range(self.laps) for g in self.gates]
        return np.array(points, dtype=float)

    def length_m(self) -> float:
        return float(np.linalg.norm(np.diff(self.waypoints(), axis=0), axis=1).sum())

    def inside(self, pos_enu_m, margin_m: float = 0.0) -> bool:
        p = np.asarray(pos_enu_m, float)
        return bool(np.all(p >= self.bounds_min_enu_m + margin_m) and np.all(p <= self.bounds_max_enu_m - margin_m))

    def to_json(self) -> dict:
        return {"format": FORMAT, "name": self.name,
                "bounds_m": {"min": self.bounds_min_enu_m.tolist(), "max": self.bounds_max_enu_m.tolist()},
                "start": {"pos_enu_m": self.start_pos_enu_m.tolist(), "yaw_deg": math.degrees(self.start_yaw_rad)},
                "laps": self.laps,
                "gates": [{"centre_enu_m": g.centre_enu_m.tolist(),
                           "yaw_deg": math.degrees(math.atan2(g.normal_enu[1], g.normal_enu[0])),
                           "inner_size_m": [g.width_m, g.height_m]} for g in self.gates]}


def resolve_course_path(name_or_path: str) -> str:
    if os.path.exists(name_or_path):
        return name_or_path
    builtin = os.path.join(COURSES_DIR, name_or_path if name_or_path.endswith(".json") else name_or_path + ".json")
    if os.path.exists(builtin):
        return builtin
    names = sorted(f[:-5] for f in os.listdir(COURSES_DIR) if f.endswith(".json"))
    raise CourseError(f"{name_or_path}: no such course file; built-in courses: {', '.join(names)}")


#: a course is checked in well under a second up to this many gates; more are refused
MAX_GATES = 5000
#: the geofence must lie within this distance of the local origin (a box of 1e300 m fences nothing)
MAX_EXTENT_M = 10_000.0
MAX_GATE_SIZE_M = 100.0
MAX_PROBLEMS = 20
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def _vector(value, n, where, problems):
    v = None
    if isinstance(value, list) and len(value) == n and not any(isinstance(x, bool) for x in value):
        try:
            v = np.asarray(value, dtype=float).reshape(-1)
        except (TypeError, ValueError, OverflowError):
            v = None
    if v is None or v.shape != (n,) or not np.all(np.isfinite(v)):
        problems.append(f"{where}: expected {n} finite numbers, got {str(value)[:60]}")
        return np.zeros(n)
    return v


def safe_name(name, fallback: str) -> str:
    """The course's name as it may appear in a log file's name: letters, digits, '-', '_' and '.'
    (anything else becomes '_'), no leading dot, at most 64 characters; never a path."""
    text = name if isinstance(name, str) else fallback
    text = "".join(c if c in NAME_CHARS else "_" for c in text)[:64].lstrip(".")
    return text or "course"


def _overlaps(gates, index, problems) -> None:
    """Two gates closer than their openings' half diagonals overlap. One vectorized row per gate
    (MAX_GATES gates: a fraction of a second); stops after MAX_PROBLEMS. `index[k]` names gates[k]."""
    if len(gates) < 2:
        return
    centres = np.array([g.centre_enu_m for g in gates])
    half_diag = np.array([0.5 * math.hypot(g.width_m, g.height_m) for g in gates])
    for i in range(len(gates) - 1):
        gap = np.linalg.norm(centres[i + 1:] - centres[i], axis=1)
        reach = half_diag[i] + half_diag[i + 1:]
        for k in np.flatnonzero(gap < reach):
            j = i + 1 + int(k)
            problems.append(f"gates[{index[i]}] and gates[{index[j]}] overlap: centres {gap[k]:.2f} m apart, their openings need "
                            f"at least {reach[k]:.2f} m; move one of them")
            if len(problems) >= MAX_PROBLEMS:
                return


def parse_course(data, where: str = "<dict>") -> Course:
    """Checks a course dict; raises CourseError listing every problem at once (the first
    MAX_PROBLEMS of them)."""
    if not isinstance(data, dict):
        raise CourseError(f"{where}: a course is a JSON object (see skyloop/courses/hall.json)")
    problems = []
    if data.get("format") != FORMAT:
        problems.append(f"format: expected {FORMAT!r}, got {str(data.get('format'))[:60]!r}")
    bounds = data.get("bounds_m")
    if not isinstance(bounds, dict):
        problems.append('bounds_m: expected {"min": [x, y, z], "max": [x, y, z]} in metres, ENU')
        bounds = {}
    lo = _vector(bounds.get("min"), 3, "bounds_m.min", problems)
    hi = _vector(bounds.get("max"), 3, "bounds_m.max", problems)
    if np.any(np.abs(lo) > MAX_EXTENT_M) or np.any(np.abs(hi) > MAX_EXTENT_M):
        problems.append(f"bounds_m: the geofence must lie within {MAX_EXTENT_M:g} m of the local origin")
        lo, hi = np.clip(lo, -MAX_EXTENT_M, MAX_EXTENT_M), np.clip(hi, -MAX_EXTENT_M, MAX_EXTENT_M)
    if np.any(hi - lo < 1.0):
        problems.append("bounds_m: max must exceed min by at least 1 m on every axis")
    start = data.get("start") if isinstance(data.get("start"), dict) else {}
    if not start:
        problems.append('start: expected {"pos_enu_m": [x, y, z], "yaw_deg": yaw}')
    start_pos = _vector(start.get("pos_enu_m"), 3, "start.pos_enu_m", problems)
    start_yaw = number(start.get("yaw_deg", 0.0), "start.yaw_deg", problems, lo=-360.0, hi=360.0, unit="deg")
    laps = number(data.get("laps", 1), "laps", problems, lo=1, hi=100, integer=True) or 1
    gates, sound = [], {}                          # sound: gates with no problem of their own, by index
    raw_gates = data.get("gates")
    if not isinstance(raw_gates, list) or not raw_gates:
        problems.append("gates: expected a non-empty list of gates")
        raw_gates = []
    if len(raw_gates) > MAX_GATES:
        raise CourseError(f"{where}: {len(raw_gates)} gates; a course holds at most {MAX_GATES}: split it")
    for i, g in enumerate(raw_gates):
        gw = f"gates[{i}]"
        if len(problems) >= MAX_PROBLEMS:
            break
        if not isinstance(g, dict):
            problems.append(f"{gw}: expected an object with centre_enu_m, yaw_deg, inner_size_m")
            continue
        before = len(problems)
        centre = _vector(g.get("centre_enu_m"), 3, f"{gw}.centre_enu_m", problems)
        yaw = number(g.get("yaw_deg"), f"{gw}.yaw_deg (direction of flight through the gate)", problems,
                     lo=-360.0, hi=360.0, unit="deg")
        yaw = 0.0 if yaw is None else yaw
        size = g.get("inner_size_m")
        size = _vector([size, size] if isinstance(size, (int, float)) and not isinstance(size, bool) else size, 2,
                       f"{gw}.inner_size_m", problems)
        if np.any(size <= 0.1) or np.any(size > MAX_GATE_SIZE_M):
            problems.append(f"{gw}.inner_size_m: the opening must be larger than 10 cm and at most "
                            f"{MAX_GATE_SIZE_M:g} m, got {size.tolist()}")
        half = np.array([0.0, 0.0, size[1] / 2])
        if not (np.all(centre - half >= lo) and np.all(centre + half <= hi)):
            problems.append(f"{gw}: centre {centre.tolist()} (with its opening) lies outside bounds_m")
        yaw_rad = math.radians(yaw)
        gates.append(Gate(centre, np.array([math.cos(yaw_rad), math.sin(yaw_rad), 0.0]), float(size[0]),
                          float(size[1])))
        if len(problems) == before:
            sound[i] = gates[-1]
    # overlaps only among gates whose own fields are sound: a misplaced gate's overlaps would be noise
    _overlaps(list(sound.values()), list(sound), problems)
    if not (np.all(start_pos >= lo) and np.all(start_pos <= hi)):
        problems.append(f"start.pos_enu_m {start_pos.tolist()} lies outside bounds_m")
    if problems:
        more = f" (stopped after the first {MAX_PROBLEMS})" if len(problems) >= MAX_PROBLEMS else ""
        raise CourseError(f"{where}: {len(problems)} problem(s){more}:\n  - " + "\n  - ".join(problems))
    name = safe_name(data.get("name"), os.path.splitext(os.path.basename(where))[0])
    return Course(name, lo, hi, start_pos, math.radians(start_yaw or 0.0), tuple(gates), laps,
                  where if where != "<dict>" else None)


def load_course(name_or_path: str) -> Course:
    path = resolve_course_path(name_or_path)
    return parse_course(read_json(path, CourseError), path)
