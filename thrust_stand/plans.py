"""Procedure plans: small JSON files a user can copy and edit (`skyloop stand plan sweep > my.json`).

    {"format": "skyloop.stand_plan/1", "procedure": "sweep", "description": "...",
     "sample_rate_hz": 200,            # or "max": the stand's highest rate
     "tare_first": true,               # zero the load cells (motor stopped) before the run
     "idle_s": 0.5,                    # armed at throttle 0 first (optional; default 0.5)
     "limits": {"max_throttle": 0.8, "max_current_a": 35, "max_thrust_n": 20},
     "sweep": {...}}                   # the procedure's own section, see SECTIONS

Every plan becomes a list of Segments (throttle held for a duration); a segment with `settle_s`
is also averaged after it settles (the sweep's points). Throttles above the limit are refused
when the plan is checked, before the stand is even opened.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from thrust_stand.driver import ThrottleLimitError, check_throttle

FORMAT = "skyloop.stand_plan/1"
PLAN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plans")

#: procedure -> its section's fields and their defaults
SECTIONS = {
    "tare": {"record_s": 2.0},
    "sweep": {"throttle_min": 0.1, "throttle_max": 0.8, "levels": 8, "dwell_s": 2.0, "settle_s": 0.8,
              "down": True, "spin_down_s": 1.5},
    "steps": {"levels": [0.3, 0.6, 0.35, 0.7, 0.25, 0.55], "hold_s": 0.4, "first_hold_s": 1.0, "spin_down_s": 1.0},
    "endurance": {"throttle": 0.5, "duration_s": 120.0, "settle_s": 2.0, "spin_down_s": 2.0},
}
LIMITS = ("max_throttle", "max_current_a", "max_thrust_n")
IDLE_S = 0.5


class PlanError(ValueError):
    """A plan that cannot run; the message names the file and the field."""


@dataclass
class Segment:
    throttle: float
    duration_s: float
    label: str
    settle_s: float | None = None       # average the samples after this (None: not a point)


@dataclass
class Plan:
    procedure: str
    data: dict                          # the plan as read (with defaults filled in)
    source: str

    @property
    def section(self) -> dict:
        return self.data[self.procedure]

    @property
    def limits(self) -> dict:
        return self.data["limits"]

    @property
    def spins(self) -> bool:
        return any(s.throttle > 0 for s in self.segments())

    def sample_rate_hz(self, stand_max_hz: float | None) -> float:
        rate = self.data.get("sample_rate_hz", 100)
        if rate == "max":
            return float(stand_max_hz or 100)
        return float(min(rate, stand_max_hz)) if stand_max_hz else float(rate)

    def duration_s(self) -> float:
        return sum(s.duration_s for s in self.segments())

    def segments(self) -> list[Segment]:
        """What the plan does; a spinning plan starts with idle_s at throttle 0 (armed, rotor at
        rest: the zero rows a calibration tares with, and the level before the first step)."""
        s = self.section
        if self.procedure == "tare":
            return [Segment(0.0, s["record_s"], "idle", settle_s=0.0)]
        return [Segment(0.0, self.data.get("idle_s", IDLE_S), "idle")] + self._spinning_segments()

    def _spinning_segments(self) -> list[Segment]:
        s = self.section
        if self.procedure == "sweep":
            up = np.linspace(s["throttle_min"], s["throttle_max"], int(s["levels"]))
            segs = [Segment(float(u), s["dwell_s"], f"up {k + 1}/{len(up)}", s["settle_s"]) for k, u in enumerate(up)]
            if s["down"]:
                down = up[-2::-1]
                segs += [Segment(float(u), s["dwell_s"], f"down {k + 1}/{len(down)}", s["settle_s"])
                         for k, u in enumerate(down)]
            return segs + [Segment(0.0, s["spin_down_s"], "spin down")]
        if self.procedure == "steps":
            levels = [float(u) for u in s["levels"]]
            segs = [Segment(levels[0], s["first_hold_s"], "spin up")]
            segs += [Segment(u, s["hold_s"], f"step {k + 1}/{len(levels) - 1}") for k, u in enumerate(levels[1:])]
            return segs + [Segment(0.0, s["spin_down_s"], "spin down")]
        return [Segment(float(s["throttle"]), s["duration_s"], "endurance", s["settle_s"]),
                Segment(0.0, s["spin_down_s"], "spin down")]

    def with_limits(self, **overrides) -> "Plan":
        """The plan with limits replaced where an override is given (not None), checked again."""
        limits = {**self.limits, **{k: float(v) for k, v in overrides.items() if v is not None}}
        return check_plan({**self.data, "limits": limits}, self.source)

    def summary(self) -> str:
        segs = self.segments()
        peak = max(s.throttle for s in segs)
        lim = self.limits
        return (f"{self.procedure}: {len(segs)} segments, {self.duration_s():.1f} s, throttle up to {peak:g} "
                f"(limits: throttle {lim['max_throttle']:g}, current {lim['max_current_a']:g} A, "
                f"thrust {lim['max_thrust_n']:g} N)")


def available_plans() -> list[str]:
    return sorted(f[:-5] for f in os.listdir(PLAN_DIR) if f.endswith(".json"))


def plan_path(name_or_path: str) -> str:
    if os.path.exists(name_or_path):
        return name_or_path
    path = os.path.join(PLAN_DIR, f"{name_or_path}.json")
    if not os.path.exists(path):
        raise PlanError(f"no plan {name_or_path!r}: give a procedure ({', '.join(available_plans())}) "
                        "or the path of a plan JSON file")
    return path


def load_plan(name_or_path: str) -> Plan:
    path = plan_path(name_or_path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise PlanError(f"{path}: not valid JSON: {exc}") from None
    return check_plan(data, path)


def check_plan(data: dict, source: str) -> Plan:
    """The plan with defaults filled in; PlanError lists every problem, ThrottleLimitError a
    throttle above the limit."""
    problems = []
    if data.get("format") != FORMAT:
        problems.append(f"format is {data.get('format')!r}, expected {FORMAT!r}")
    procedure = data.get("procedure")
    if procedure not in SECTIONS:
        raise PlanError(f"{source}: procedure {procedure!r} unknown; known: {', '.join(SECTIONS)}")
    stray = sorted(set(data) - {"format", "procedure", "description", "sample_rate_hz", "tare_first", "idle_s",
                              "limits", procedure})
    if stray:
        problems.append(f"unknown field(s) {stray}")
    section = {**SECTIONS[procedure], **data.get(procedure, {})}
    unknown = sorted(set(data.get(procedure, {})) - set(SECTIONS[procedure]))
    if unknown:
        problems.append(f"{procedure}: unknown field(s) {unknown}; known: {sorted(SECTIONS[procedure])}")
    limits = data.get("limits", {})
    for name in LIMITS:
        value = limits.get(name)
        if not isinstance(value, (int, float)) or value <= 0:
            problems.append(f"limits.{name} must be a positive number (every run has a throttle, current and "
                            f"thrust limit), got {value!r}")
    if isinstance(limits.get("max_throttle"), (int, float)) and limits["max_throttle"] > 1:
        problems.append(f"limits.max_throttle is {limits['max_throttle']!r}; throttle is 0..1")
    idle = data.get("idle_s", IDLE_S)
    if not (isinstance(idle, (int, float)) and idle >= 0):
        problems.append(f"idle_s must be seconds >= 0, got {idle!r}")
    rate = data.get("sample_rate_hz", 100)
    if rate != "max" and not (isinstance(rate, (int, float)) and 0 < rate <= 10000):
        problems.append(f"sample_rate_hz must be a number of Hz or \"max\", got {rate!r}")
    for name, value in section.items():
        if name.endswith("_s") and not (isinstance(value, (int, float)) and value >= 0):
            problems.append(f"{procedure}.{name} must be seconds >= 0, got {value!r}")
    if procedure == "steps" and (not isinstance(section["levels"], list) or len(section["levels"]) < 2):
        problems.append("steps.levels must list at least two throttles")
    if problems:
        raise PlanError(f"{source}: " + "; ".join(problems))
    plan = Plan(procedure, {**data, procedure: section, "sample_rate_hz": rate}, source)
    for seg in plan.segments():
        try:
            check_throttle(seg.throttle, limits["max_throttle"])
        except ThrottleLimitError as exc:
            raise ThrottleLimitError(f"{source}: segment '{seg.label}': {exc}") from None
    return plan
