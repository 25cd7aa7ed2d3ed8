"""Drone profiles: the nominal drone in SI, where each number came from, and its randomization.

A profile is JSON (format "skyloop.profile/1"):

    {"format": "skyloop.profile/1", "name": "...", "description": "...",
     "params": {"mass_kg": 0.027, ...},            every field of the C struct SlParams
     "source": {"mass_kg": "datasheet", ...},      where each number came from (text or an object)
     "randomization": {"mass_frac": 0.1, ...}}     optional; fields of SlRandomization, absent = 0

The field names, their sizes and valid ranges come from the C core's tables, so the loader and
the simulator cannot disagree. `load_profile` reports every bad field at once.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from sim.core import PARAM_FIELDS, RANDOMIZATION_FIELDS
from skyloop.inputs import read_json

FORMAT = "skyloop.profile/1"
PROFILE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "profiles")


class ProfileError(ValueError):
    """A profile that cannot be used; `problems` lists every bad field."""

    def __init__(self, where: str, problems: list[str]):
        self.where = where
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"profile {where} has {len(problems)} problem(s):\n{lines}")


@dataclass
class Profile:
    name: str
    params: dict
    randomization: dict
    source: dict = field(default_factory=dict)
    description: str = ""
    path: str | None = None

    def to_json(self) -> dict:
        return {"format": FORMAT, "name": self.name, "description": self.description,
                "params": self.params, "source": self.source, "randomization": self.randomization}

    def nominal(self) -> "Profile":
        """The same drone with no randomization (the exact nominal drone)."""
        return Profile(self.name, dict(self.params), no_randomization(), dict(self.source), self.description, self.path)


def no_randomization() -> dict:
    return {name: ([0.0] * count if count > 1 else 0.0) for name, (_o, count, _lo, _hi, _d) in RANDOMIZATION_FIELDS.items()}


def available_profiles() -> list[str]:
    return sorted(f[:-5] for f in os.listdir(PROFILE_DIR) if f.endswith(".json"))


def resolve_profile_path(name_or_path: str) -> str:
    if os.path.exists(name_or_path):
        return name_or_path
    candidate = os.path.join(PROFILE_DIR, name_or_path + ("" if name_or_path.endswith(".json") else ".json"))
    if os.path.exists(candidate):
        return candidate
    raise ProfileError(name_or_path, [f"no such file, and no built-in profile of that name; built-in: {available_profiles()}"])


def _check_block(block: dict, fields: dict, what: str, required: bool) -> list[str]:
    problems = []
    if not isinstance(block, dict):
        return [f"'{what}' must be an object of field: number, got {type(block).__name__}"]
    for name in sorted(set(block) - set(fields)):
        problems.append(f"{what}.{name}: unknown field (valid: {', '.join(sorted(fields))})")
    for name, (_offset, count, lo, hi, doc) in fields.items():
        if name not in block:
            if required:
                problems.append(f"{what}.{name}: missing ({doc}; {count} number(s) in [{lo:g}, {hi:g}])")
            continue
        value = block[name]
        values = value if isinstance(value, list) else [value]
        if count > 1 and not isinstance(value, list) or len(values) != count:
            problems.append(f"{what}.{name}: expected {count} number(s), got {value!r}")
            continue
        for k, v in enumerate(values):
            label = f"{what}.{name}" + (f"[{k}]" if count > 1 else "")
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                problems.append(f"{label}: {v!r} is not a number")
            elif not math.isfinite(v):
                problems.append(f"{label}: {v!r} is not finite")
            elif not lo <= v <= hi:
                sign = "negative" if v < 0 else "out of range"
                problems.append(f"{label} = {v:g} is {sign}: valid range [{lo:g}, {hi:g}]")
    return problems


def parse_profile(data: dict, where: str = "<dict>") -> Profile:
    """Validates a profile's JSON object; raises ProfileError listing every problem."""
    if not isinstance(data, dict):
        raise ProfileError(where, ["the file must hold one JSON object"])
    problems = []
    if data.get("format") != FORMAT:
        problems.append(f"format: expected {FORMAT!r}, got {data.get('format')!r}")
    params = data.get("params")
    if params is None:
        problems.append("params: missing (the drone's numbers, see sim/profiles/crazyflie21.json)")
        params = {}
    problems += _check_block(params, PARAM_FIELDS, "params", required=True)
    randomization = data.get("randomization", {})
    problems += _check_block(randomization, RANDOMIZATION_FIELDS, "randomization", required=False)
    source = data.get("source", {})
    if not isinstance(source, dict):
        problems.append("source: must be an object of field: where the number came from")
        source = {}
    if problems:
        raise ProfileError(where, problems)
    full_randomization = no_randomization()
    full_randomization.update(randomization)
    return Profile(name=str(data.get("name", os.path.basename(where))), params=dict(params),
                   randomization=full_randomization, source=dict(source),
                   description=str(data.get("description", "")))


def load_profile(name_or_path: str) -> Profile:
    """Loads a profile by built-in name (e.g. 'crazyflie21') or path, validated."""
    path = resolve_profile_path(name_or_path)
    data = read_json(path, error=lambda message: ProfileError(path, [message.removeprefix(f"{path}: ")]))
    profile = parse_profile(data, path)
    profile.path = path
    return profile
