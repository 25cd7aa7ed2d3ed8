"""A course as the runner flies it: which gate is next, the gate passes on the flown path (by the
sim's own gate rule, sim.core.gate_check), and the target the policy flies to.

A gate is passed when the drone's path crosses the gate's plane in the flight direction inside
the opening. The policy flies to targets, so the runner turns the course into a target that
slides along the polyline start -> gate 1 -> ... -> gate N (-> gate 1 for the next lap),
`lookahead_m` ahead of the drone's progress: a target never further than the policy saw in
training. The course model itself (Course, Gate, parse_course, load_course) is skyloop/course.py;
its names are importable from here too.
"""
from __future__ import annotations

import numpy as np

from sim.core import GATE_FLOATS, gate_check
from skyloop.course import (FORMAT, Course, CourseError, Gate, load_course, parse_course,  # noqa: F401
                            resolve_course_path, safe_name)


#: race mode takes off straight up: until the drone is TAKEOFF_CLIMB_M over where it started (less
#: when gate 1 is lower, never under TAKEOFF_CLIMB_MIN_M) it sees no gates and aims at the point over
#: its start, the sim's hover task. Aiming at gate 1 from the ground, the generalist leaned 41..55 deg
#: before it was 1 m up on ArduCopter (SITL): how a real vehicle flips at take-off.
TAKEOFF_CLIMB_M, TAKEOFF_CLIMB_MIN_M, TAKEOFF_CLIMB_TOLERANCE_M = 1.0, 0.3, 0.2


def races(policy) -> bool:
    """A policy trained on the sim's race task sees the next gates and aims at them, as in the sim."""
    return "race" in policy.metadata.get("tasks", [])


def gate_row(gate: Gate) -> list:
    """The sim's gate record (GATE_FLOATS): centre ENU, unit normal, half width, half height."""
    return [*gate.centre_enu_m, *gate.normal_enu, gate.width_m / 2, gate.height_m / 2]


def gate_crossed(gate: Gate, p0_enu_m, p1_enu_m, radius_m: float = 0.0) -> bool:
    """True when the segment p0 -> p1 (a drone of radius_m) passes through the gate's opening in its
    flight direction: the sim's own gate rule (sim.core.gate_check, the C function races score with)."""
    return gate_check(gate_row(gate), p0_enu_m, p1_enu_m, radius_m, 0.0) > 0


class CourseProgress:
    """Which gate is next, gate passes on the flown path, and the sliding target for the policy."""

    def __init__(self, course: Course, lookahead_m: float = 1.5, race: bool = False):
        self.course = course
        self.lookahead_m = lookahead_m
        #: race: the policy was trained on the sim's race task, so it sees the next gates and its
        #: target is the next gate's centre, as in the sim; otherwise the sliding target below
        self.race = race
        #: race mode's take-off climb (TAKEOFF_CLIMB_M): the point it aims at, set from the first position
        self.climbing, self.climb_to_enu_m = race, None
        self.points = course.waypoints()
        self.next_gate = 0                      # index into the flattened gates of all laps
        self.passes: list[tuple[int, float]] = []   # (gate number over all laps, time)
        self.total_gates = len(course.gates) * course.laps
        self.failsafe: str | None = None        # a course never asks to stop (the TargetSource interface)
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
        if self.climbing and self.climb_to_enu_m is None:
            first_z = self.course.gates[0].centre_enu_m[2]
            climb = min(TAKEOFF_CLIMB_M, max(first_z - pos[2], TAKEOFF_CLIMB_MIN_M))
            self.climb_to_enu_m = pos + [0.0, 0.0, climb]
        if self.climbing and pos[2] >= self.climb_to_enu_m[2] - TAKEOFF_CLIMB_TOLERANCE_M:
            self.climbing = False
        self._last_pos = pos
        return self.target(pos)

    def next_gates(self, count: int) -> np.ndarray:
        """The next `count` gates still to pass, as the sim observes them: [k, GATE_FLOATS] rows of centre
        ENU, unit normal, half width, half height; fewer near the end, none for a policy that does not
        race (the sliding target) or during race mode's take-off climb."""
        rows = [] if self.climbing or not self.race else [
            gate_row(self.course.gates[n % len(self.course.gates)])
            for n in range(self.next_gate, min(self.next_gate + count, self.total_gates))]
        return np.array(rows, dtype=np.float32).reshape(-1, GATE_FLOATS)

    def log_fields(self) -> dict:
        return {}

    def stopped(self, reason: str | None) -> None:
        pass

    def target(self, pos_enu_m) -> np.ndarray:
        """A point on the current leg (towards the next gate), lookahead_m beyond the drone's projection onto
        it; past the gate plane, the target is the gate itself, so the drone flies through it. After the last
        gate: hold a point 2 m beyond it."""
        pos = np.asarray(pos_enu_m, float)
        if self.finished:
            last = self.course.gates[(self.total_gates - 1) % len(self.course.gates)]
            return last.centre_enu_m + 2.0 * last.normal_enu
        if self.climbing and self.climb_to_enu_m is not None:
            return self.climb_to_enu_m.copy()
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
