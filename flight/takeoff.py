"""Between arming and the policy: wait until the motors are live, then let them spool up.

Real autopilots do not spin the motors the moment they arm. ArduCopter keeps them stopped for 2 s
(ARMING_DELAY_SEC, compiled in), ramps them to ground idle (MOT_SPIN_ARM) over MOT_SPOOL_TIME,
and only spools up to full authority over another MOT_SPOOL_TIME once it is asked for thrust; PX4
waits COM_SPOOLUP_TIME. A policy started at the arm acknowledgement pushes for ~3 s against a
vehicle that cannot move (its observation unchanged, its rate commands winding up the
autopilot's attitude target) and leaves the ground tilted 40..74 deg (measured on ArduCopter
4.5.5). So the runner holds, with zero body rates:

    arming   thrust 0, until the motor outputs (SERVO_OUTPUT_RAW) rise above idle-off on all four
             motors (or, on a link that reports no outputs, for `blind_delay_s`);
    spool    a thrust well below hover (SPOOL_HOVER_FRACTION of it: the vehicle stays on the ground,
             level) for `spool_s`, so the autopilot reaches full authority;
    policy   from here the policy flies, its action history set to the spool hold.

No live motors within `live_timeout_s` of arming is a failsafe (the runner lands and disarms).
"""
from __future__ import annotations

import numpy as np

LIVE_OUTPUT = 0.01              # a motor output (0..1) above this is spinning
SPOOL_HOVER_FRACTION = 0.5      # the spool hold's thrust, as a fraction of the hover thrust


def spool_action(mode: str, hover_action: float) -> np.ndarray:
    """The spool hold: SPOOL_HOVER_FRACTION of the hover thrust, zero rates (ctbr) or all motors (motor)."""
    thrust = SPOOL_HOVER_FRACTION * (hover_action + 1.0) - 1.0
    return np.array([thrust, 0, 0, 0] if mode == "ctbr" else [thrust] * 4, np.float32)


class Takeoff:
    """Which hold to send after arming, tick by tick. `link.motor_outputs()` returns the newest
    outputs (0..1, sim order) or None when the vehicle reports none."""

    def __init__(self, link, mode: str, hover_action: float, armed_at_s: float, *, spool_s: float = 1.2,
                 blind_delay_s: float = 2.5, live_timeout_s: float = 6.0):
        self.link, self.mode, self.hover_action = link, mode, hover_action
        self.armed_at_s, self.spool_s = armed_at_s, spool_s
        self.blind_delay_s, self.live_timeout_s = blind_delay_s, live_timeout_s
        self.phase = "arming"
        self.live_at_s: float | None = None
        self.failsafe: str | None = None

    def hold(self, now_s: float) -> np.ndarray | None:
        """The hold action for this tick, or None once the policy may fly."""
        if self.phase == "arming":
            outputs = self.link.motor_outputs() if hasattr(self.link, "motor_outputs") else None
            since_arm = now_s - self.armed_at_s
            live = (outputs is not None and float(np.min(outputs)) > LIVE_OUTPUT) or \
                (outputs is None and since_arm >= self.blind_delay_s)
            if live:
                self.phase, self.live_at_s = "spool", now_s
            elif since_arm > self.live_timeout_s:
                self.failsafe = (f"the motors did not start within {self.live_timeout_s:g} s of arming (outputs "
                                 f"{None if outputs is None else np.round(outputs, 3).tolist()}): check the ESCs, "
                                 "the motor interlock / emergency stop switch, and the autopilot's messages")
                return self._idle()
            else:
                return self._idle()
        if self.phase == "spool":
            if now_s - self.live_at_s < self.spool_s:
                return spool_action(self.mode, self.hover_action)
            self.phase = "policy"
        return None

    def _idle(self) -> np.ndarray:
        return np.array([-1.0, 0, 0, 0] if self.mode == "ctbr" else [-1.0] * 4, np.float32)
