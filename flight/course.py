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

import json
import math
import os
from dataclasses import dataclass

import numpy as np

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


def _vector(value, n, where, problems):
    try:
        v = np.asarray(value, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        v = None
    if v is None or v.shape != (n,) or not np.all(np.isfinite(v)):
        problems.append(f"{where}: expected {n} finite numbers, got {value!r}")
        return np.zeros(n)
    return v


def parse_course(data, where: str = "<dict>") -> Course:
    """Checks a course dict; raises CourseError listing every problem at once."""
    if not isinstance(data, dict):
        raise CourseError(f"{where}: a course is a JSON object (see flight/courses/hall.json)")
    problems = []
    if data.get("format") != FORMAT:
        problems.append(f"format: expected {FORMAT!r}, got {data.get('format')!r}")
    bounds = data.get("bounds_m")
    if not isinstance(bounds, dict):
        problems.append('bounds_m: expected {"min": [x, y, z], "max": [x, y, z]} in metres, ENU')
        bounds = {}
    lo = _vector(bounds.get("min"), 3, "bounds_m.min", problems)
    hi = _vector(bounds.get("max"), 3, "bounds_m.max", problems)
    if np.any(hi - lo < 1.0):
        problems.append("bounds_m: max must exceed min by at least 1 m on every axis")
    start = data.get("start") if isinstance(data.get("start"), dict) else {}
    if not start:
        problems.append('start: expected {"pos_enu_m": [x, y, z], "yaw_deg": yaw}')
    start_pos = _vector(start.get("pos_enu_m"), 3, "start.pos_enu_m", problems)
    start_yaw = start.get("yaw_deg", 0.0)
    if not isinstance(start_yaw, (int, float)) or not math.isfinite(start_yaw):
        problems.append(f"start.yaw_deg: expected a number, got {start_yaw!r}")
        start_yaw = 0.0
    laps = data.get("laps", 1)
    if not isinstance(laps, int) or isinstance(laps, bool) or not 1 <= laps <= 100:
        problems.append(f"laps: expected a whole number from 1 to 100, got {laps!r}")
        laps = 1
    gates = []
    raw_gates = data.get("gates")
    if not isinstance(raw_gates, list) or not raw_gates:
        problems.append("gates: expected a non-empty list of gates")
        raw_gates = []
    for i, g in enumerate(raw_gates):
        gw = f"gates[{i}]"
        if not isinstance(g, dict):
            problems.append(f"{gw}: expected an object with centre_enu_m, yaw_deg, inner_size_m")
            continue
        centre = _vector(g.get("centre_enu_m"), 3, f"{gw}.centre_enu_m", problems)
        yaw = g.get("yaw_deg")
        if not isinstance(yaw, (int, float)) or isinstance(yaw, bool) or not math.isfinite(yaw):
            problems.append(f"{gw}.yaw_deg: expected a number (direction of flight through the gate), got {yaw!r}")
            yaw = 0.0
        size = g.get("inner_size_m")
        size = _vector([size, size] if isinstance(size, (int, float)) and not isinstance(size, bool) else size, 2,
                       f"{gw}.inner_size_m", problems)
        if np.any(size <= 0.1):
            problems.append(f"{gw}.inner_size_m: the opening must be larger than 10 cm, got {size.tolist()}")
        half = np.array([0.0, 0.0, size[1] / 2])
        if not (np.all(centre - half >= lo) and np.all(centre + half <= hi)):
            problems.append(f"{gw}: centre {centre.tolist()} (with its opening) lies outside bounds_m")
        yaw_rad = math.radians(yaw)
        gates.append(Gate(centre, np.array([math.cos(yaw_rad), math.sin(yaw_rad), 0.0]), float(size[0]),
                          float(size[1])))
    for i, a in enumerate(gates):                  # two gates closer than their openings' half diagonals overlap
        for j in range(i + 1, len(gates)):
            b = gates[j]
            gap = float(np.linalg.norm(a.centre_enu_m - b.centre_enu_m))
            reach = 0.5 * (math.hypot(a.width_m, a.height_m) + math.hypot(b.width_m, b.height_m))
            if gap < reach:
                problems.append(f"gates[{i}] and gates[{j}] overlap: centres {gap:.2f} m apart, their openings need "
                                f"at least {reach:.2f} m; move one of them")
    if not (np.all(start_pos >= lo) and np.all(start_pos <= hi)):
        problems.append(f"start.pos_enu_m {start_pos.tolist()} lies outside bounds_m")
    if problems:
        raise CourseError(f"{where}: {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))
    return Course(str(data.get("name", os.path.splitext(os.path.basename(where))[0])), lo, hi, start_pos,
                  math.radians(start_yaw), tuple(gates), laps, where if where != "<dict>" else None)


def load_course(name_or_path: str) -> Course:
    path = resolve_course_path(name_or_path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise CourseError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except OSError as exc:
        raise CourseError(f"{path}: cannot read it ({exc.strerror})") from None
    return parse_course(data, path)


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
