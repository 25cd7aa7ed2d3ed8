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

import os
from dataclasses import dataclass

import numpy as np

from skyloop.inputs import number, read_json
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
        limits = {**self.limits, **{k: v for k, v in overrides.items() if v is not None}}
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
    return check_plan(read_json(path, PlanError), path)


#: the largest values a plan may hold: far beyond any real stand, small enough to check before use
MAX_LEVELS = 1000
MAX_SEGMENT_S = 24 * 3600.0
LIMIT_RANGES = {"max_throttle": (0.0, 1.0, ""), "max_current_a": (0.0, 1000.0, "A"), "max_thrust_n": (0.0, 10000.0, "N")}


def _check_section(procedure: str, section: dict, problems: list) -> None:
    """Every field of the procedure's section is the right type and in range (before anything is built
    from it: `levels: 1e9` must not allocate a billion segments)."""
    for name, value in section.items():
        where = f"{procedure}.{name}"
        if name.endswith("_s"):
            number(value, where, problems, lo=0.0, hi=MAX_SEGMENT_S, unit="s")
        elif name in ("throttle_min", "throttle_max", "throttle"):
            number(value, where, problems, lo=0.0, hi=1.0)
        elif name == "down":
            if not isinstance(value, bool):
                problems.append(f"{where} must be true or false, got {value!r}")
        elif name == "levels" and procedure == "sweep":
            number(value, where, problems, lo=2, hi=MAX_LEVELS, integer=True)
        elif name == "levels":
            if not isinstance(value, list) or not 2 <= len(value) <= MAX_LEVELS:
                problems.append(f"steps.levels must list 2 to {MAX_LEVELS} throttles, got "
                                f"{type(value).__name__ if not isinstance(value, list) else f'{len(value)} of them'}")
            else:
                for k, u in enumerate(value):
                    number(u, f"steps.levels[{k}]", problems, lo=0.0, hi=1.0)


def check_plan(data: dict, source: str) -> Plan:
    """The plan with defaults filled in; PlanError lists every problem, ThrottleLimitError a
    throttle above the limit. Every number is checked for type, finiteness and range first."""
    if not isinstance(data, dict):
        raise PlanError(f"{source}: a plan is a JSON object (see `skyloop stand plan sweep`), got {type(data).__name__}")
    problems = []
    if data.get("format") != FORMAT:
        problems.append(f"format is {data.get('format')!r}, expected {FORMAT!r}")
    procedure = data.get("procedure")
    if not isinstance(procedure, str) or procedure not in SECTIONS:
        raise PlanError(f"{source}: procedure {procedure!r} unknown; known: {', '.join(SECTIONS)}")
    stray = sorted(map(str, set(data) - {"format", "procedure", "description", "sample_rate_hz", "tare_first",
                                         "idle_s", "limits", procedure}))
    if stray:
        problems.append(f"unknown field(s) {stray}")
    given = data.get(procedure, {})
    if not isinstance(given, dict):
        raise PlanError(f"{source}: {procedure} must be an object of the procedure's fields, got {given!r:.60}")
    section = {**SECTIONS[procedure], **given}
    unknown = sorted(set(given) - set(SECTIONS[procedure]))
    if unknown:
        problems.append(f"{procedure}: unknown field(s) {unknown}; known: {sorted(SECTIONS[procedure])}")
    limits = data.get("limits", {})
    if not isinstance(limits, dict):
        problems.append(f"limits must be an object with {', '.join(LIMITS)}, got {limits!r:.60}")
        limits = {}
    for name, (lo, hi, unit) in LIMIT_RANGES.items():
        if name not in limits:
            problems.append(f"limits.{name} must be a positive number (every run has a throttle, current and "
                            "thrust limit); it is missing")
        else:
            number(limits[name], f"limits.{name}", problems, lo=lo, hi=hi, lo_open=True, unit=unit)
    stray_limits = sorted(map(str, set(limits) - set(LIMITS)))
    if stray_limits:
        problems.append(f"limits: unknown field(s) {stray_limits}; known: {list(LIMITS)}")
    idle = data.get("idle_s", IDLE_S)
    number(idle, "idle_s", problems, lo=0.0, hi=MAX_SEGMENT_S, unit="s")
    rate = data.get("sample_rate_hz", 100)
    if rate != "max":
        number(rate, "sample_rate_hz (a number of Hz or \"max\")", problems, lo=0.0, hi=10000.0, lo_open=True)
    if not isinstance(data.get("tare_first", False), bool):
        problems.append(f"tare_first must be true or false, got {data['tare_first']!r}")
    if not isinstance(data.get("description", ""), str):
        problems.append("description must be text")
    _check_section(procedure, section, problems)
    if problems:
        raise PlanError(f"{source}: " + "; ".join(problems))
    plan = Plan(procedure, {**data, procedure: section, "sample_rate_hz": rate}, source)
    for seg in plan.segments():
        try:
            check_throttle(seg.throttle, limits["max_throttle"])
        except ThrottleLimitError as exc:
            raise ThrottleLimitError(f"{source}: segment '{seg.label}': {exc}") from None
    return plan
