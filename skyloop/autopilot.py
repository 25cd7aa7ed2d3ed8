"""Autopilot facts every part shares: the flight modes' custom_mode numbers as the real flight
controllers number them, which of them take offboard setpoints, and the MAVLink magic numbers.

Pure Python, in the lowest layer (no sim, no MAVLink library): the simulated vehicle
(flight/sitl/), the MAVLink link (flight/link.py) and the log readers all read these.

ArduPilot Copter numbers its modes 0.. (STABILIZE 0, GUIDED 4, LAND 9, GUIDED_NOGPS 20); PX4
packs a main mode into bits 16..23 of custom_mode and a sub mode into bits 24..31.
"""
from __future__ import annotations

AUTOPILOTS = ("ardupilot", "px4")


def px4_mode(main: int, sub: int = 0) -> int:
    """PX4's custom_mode: main mode in bits 16..23, sub mode in bits 24..31."""
    return (int(main) << 16) | (int(sub) << 24)


#: autopilot -> {mode name: custom_mode}
MODES = {"ardupilot": {"STABILIZE": 0, "GUIDED": 4, "LAND": 9, "GUIDED_NOGPS": 20},
         "px4": {"STABILIZED": px4_mode(7), "OFFBOARD": px4_mode(6), "AUTO.LAND": px4_mode(4, 6)}}
#: the modes that fly offboard setpoints (SET_ATTITUDE_TARGET), and the one the runner enters
OFFBOARD_MODES = {"ardupilot": ("GUIDED", "GUIDED_NOGPS"), "px4": ("OFFBOARD",)}
OFFBOARD = {"ardupilot": "GUIDED_NOGPS", "px4": "OFFBOARD"}
LANDING = {"ardupilot": "LAND", "px4": "AUTO.LAND"}
STARTING = {"ardupilot": "STABILIZE", "px4": "STABILIZED"}
#: COMPONENT_ARM_DISARM param2 that forces a disarm in the air (both autopilots)
FORCE_DISARM_MAGIC = 21196


def mode_name(autopilot: str, custom_mode: int) -> str:
    """The mode's name, or 'mode N' for one not in MODES."""
    names = {v: k for k, v in MODES.get(autopilot, {}).items()}
    return names.get(int(custom_mode), f"mode {custom_mode}")
