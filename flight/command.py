"""Policy actions -> what a flight controller is sent, shared by every link (flight/link.py,
flight/msp/): the ctbr action as collective thrust + body rates, and the action that idles or
holds hover.

In the sim, a ctbr action a[0] asks for the fraction (a[0] + 1) / 2 of the nominal drone's
maximum thrust and a[1:4] for body rates FLU scaled by rate_max_rad_s (sim/c/physics.h).
"""
from __future__ import annotations

import numpy as np


def ctbr_command(action, hover_action: float, rate_max_rad_s,
                 hover_throttle: float | None) -> tuple[float, np.ndarray]:
    """The policy's ctbr action -> (normalized thrust 0..1 for SET_ATTITUDE_TARGET, body rates FLU).

    `hover_action` is the nominal drone's hover action (the shadow model's). A vehicle that
    reports its hover throttle (ArduPilot MOT_THST_HOVER) gets the thrust fraction rescaled so
    the policy's hover action lands exactly on the vehicle's hover throttle."""
    frac = float(np.clip((action[0] + 1.0) / 2.0, 0.0, 1.0))
    if hover_throttle:
        frac *= hover_throttle / ((hover_action + 1.0) / 2.0)
    rates_flu = np.clip(np.asarray(action[1:4], float), -1.0, 1.0) * np.asarray(rate_max_rad_s, float)
    return float(np.clip(frac, 0.0, 1.0)), rates_flu


def hold_action(mode: str, hover_action: float, on_ground: bool) -> np.ndarray:
    """The action that idles on the ground (zero thrust) or holds hover, with zero rates."""
    thrust = -1.0 if on_ground else hover_action
    return np.array([thrust, 0, 0, 0] if mode == "ctbr" else [thrust] * 4, np.float32)
