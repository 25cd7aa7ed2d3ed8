"""Courses: a geofence box, a start, gates and laps (world frame ENU), read from JSON.

    {"format": "skyloop.course/1", "name": "hall",
     "bounds_m": {"min": [-20, -12.5, 0], "max": [20, 12.5, 8]},
     "start": {"pos_enu_m": [-14, -8, 0], "yaw_deg": 0},
     "laps": 1,
     "gates": [{"centre_enu_m": [-6, -8, 1.8], "yaw_deg": 0, "inner_size_m": 1.5}, ...]}

A gate's `yaw_deg` is the direction of flight through it (its normal), counter-clockwise from
east; `inner_size_m` is the side of its square opening (or [width, height]). A gate is passed
when the drone's path crosses the gate's plane in the flight direction inside the opening.

The policy flies to targets, so the runner turns the course into a target that slides along the
polyline start -> gate 1 -> ... -> gate N (-> gate 1 for the next lap), `lookahead_m` ahead of
the drone's progress: a target never further than the policy saw in training.
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


def _overlaps(gates, problems) -> None:
    """Two gates closer than their openings' half diagonals overlap. One vectorized row per gate
    (MAX_GATES gates: a fraction of a second); stops after MAX_PROBLEMS."""
    if len(gates) < 2:
        return
    centres = np.array([g.centre_enu_m for g in gates])
    half_diag = np.array([0.5 * math.hypot(g.width_m, g.height_m) for g in gates])
    for i in range(len(gates) - 1):
        gap = np.linalg.norm(centres[i + 1:] - centres[i], axis=1)
        reach = half_diag[i] + half_diag[i + 1:]
        for k in np.flatnonzero(gap < reach):
            j = i + 1 + int(k)
            problems.append(f"gates[{i}] and gates[{j}] overlap: centres {gap[k]:.2f} m apart, their openings need "
                            f"at least {reach[k]:.2f} m; move one of them")
            if len(problems) >= MAX_PROBLEMS:
                return


def parse_course(data, where: str = "<dict>") -> Course:
    """Checks a course dict; raises CourseError listing every problem at once (the first
    MAX_PROBLEMS of them)."""
    if not isinstance(data, dict):
        raise CourseError(f"{where}: a course is a JSON object (see flight/courses/hall.json)")
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
    if np.any(hi - lo < 1.0):
        problems.append("bounds_m: max must exceed min by at least 1 m on every axis")
    start = data.get("start") if isinstance(data.get("start"), dict) else {}
    if not start:
        problems.append('start: expected {"pos_enu_m": [x, y, z], "yaw_deg": yaw}')
    start_pos = _vector(start.get("pos_enu_m"), 3, "start.pos_enu_m", problems)
    start_yaw = number(start.get("yaw_deg", 0.0), "start.yaw_deg", problems, lo=-360.0, hi=360.0, unit="deg")
    laps = number(data.get("laps", 1), "laps", problems, lo=1, hi=100, integer=True) or 1
    gates = []
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
    if len(problems) < MAX_PROBLEMS:
        _overlaps(gates, problems)
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


def gate_crossed(gate: Gate, p0_enu_m, p1_enu_m) -> bool:
    """True when the segment p0 -> p1 crosses the gate's plane in its flight direction, inside the opening."""
    p0, p1 = np.asarray(p0_enu_m, float), np.asarray(p1_enu_m, float)
    d0, d1 = float(np.dot(p0 - gate.centre_enu_m, gate.normal_enu)), float(np.dot(p1 - gate.centre_enu_m, gate.normal_enu))
    if not (d0 < 0.0 <= d1):
        return False
    hit = p0 + (p1 - p0) * (-d0 / (d1 - d0))
    offset = hit - gate.centre_enu_m
    side = np.array([-gate.normal_enu[1], gate.normal_enu[0], 0.0])
    return abs(float(np.dot(offset, side))) <= gate.width_m / 2 and abs(float(offset[2])) <= gate.height_m / 2


class CourseProgress:
    """Which gate is next, gate passes on the flown path, and the sliding target for the policy."""

    def __init__(self, course: Course, lookahead_m: float = 1.5, race: bool = False):
        self.course = course
        self.lookahead_m = lookahead_m
        #: race: the policy was trained on the sim's race task, so it sees the next gates and its
        #: target is the next gate's centre, as in the sim; otherwise the sliding target below
        self.race = race
        self.points = course.waypoints()
        self.next_gate = 0                      # index into the flattened gates of all laps
        self.passes: list[tuple[int, float]] = []   # (gate number over all laps, time)
        self.total_gates = len(course.gates) * course.laps
        self._last_pos = None

    @property
    def finished(self) -> bool:
        return self.next_gate >= self.total_gates

    def update(self, pos_enu_m, t_s: float) -> np.ndarray:
        """Records a gate pass if the path since the last call went through the next gate; returns the target."""
        pos = np.asarray(pos_enu_m, float)
        if self._last_pos is not None and not self.finished:
            gate = self.course.gates[self.next_gate % len(self.course.gates)]
            if gate_crossed(gate, self._last_pos, pos):
                self.passes.append((self.next_gate, t_s))
                self.next_gate += 1
        self._last_pos = pos
        return self.target(pos)

    def next_gates(self, count: int) -> np.ndarray:
        """The next `count` gates still to pass (fewer near the end), as the sim observes them:
        [k, GATE_FLOATS] rows of centre ENU, unit normal, half width, half height."""
        rows = []
        for n in range(self.next_gate, min(self.next_gate + count, self.total_gates)):
            g = self.course.gates[n % len(self.course.gates)]
            rows.append([*g.centre_enu_m, *g.normal_enu, g.width_m / 2, g.height_m / 2])
        from sim.core import GATE_FLOATS        # the sim's gate record: centre, normal, half width, half height
        return np.array(rows, dtype=np.float32).reshape(-1, GATE_FLOATS)

    def target(self, pos_enu_m) -> np.ndarray:
        """A point on the current leg (towards the next gate), lookahead_m beyond the drone's projection onto
        it; past the gate plane, the target is the gate itself, so the drone flies through it. After the last
        gate: hold a point 2 m beyond it."""
        pos = np.asarray(pos_enu_m, float)
        if self.finished:
            last = self.course.gates[(self.total_gates - 1) % len(self.course.gates)]
            return last.centre_enu_m + 2.0 * last.normal_enu
        if self.race:
            return self.course.gates[self.next_gate % len(self.course.gates)].centre_enu_m.copy()
        a, b = self.points[self.next_gate], self.points[self.next_gate + 1]
        gate = self.course.gates[self.next_gate % len(self.course.gates)]
        leg = b - a
        length = float(np.linalg.norm(leg))
        s = float(np.clip(np.dot(pos - a, leg) / max(length, 1e-9), 0.0, length))
        ahead = s + self.lookahead_m
        if ahead < length:
            return a + leg * (ahead / length)
        # near the gate: aim through it, along its normal, so the drone crosses the opening square on
        return b + gate.normal_enu * min(ahead - length, self.lookahead_m)
