"""Betaflight's rate curves (MSP_RC_TUNING): stick deflection -> body rate, and the inverse the
ctbr link flies with, so the commanded rate is the rate Betaflight flies (src/main/fc/rc.c)."""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from flight.msp.protocol import LinkError, MspError

RC_MID_US, RC_MIN_US, RC_MAX_US = 1500, 1000, 2000
RATES_TYPES = ("betaflight", "raceflight", "kiss", "actual", "quick")
RC_RATE_INCREMENTAL = 14.54                  # src/main/fc/rc.c


@dataclass(frozen=True)
class RateProfile:
    """Betaflight's rate profile (MSP_RC_TUNING), per axis roll, pitch, yaw, as the firmware stores it."""
    rates_type: str                   # one of RATES_TYPES
    rc_rate: tuple                    # rcRates[3]
    rc_expo: tuple                    # rcExpo[3]
    rate: tuple                       # rates[3] ("super rate" / "max rate")
    rate_limit_deg_s: tuple           # rate_limit[3]

    @classmethod
    def from_msp(cls, payload: bytes) -> "RateProfile":
        if len(payload) < 23:
            raise MspError(f"MSP_RC_TUNING reply has {len(payload)} bytes; Betaflight 4.2+ (API 1.43+) sends at least "
                           "23: update the flight controller's firmware")
        p = payload
        rc_rate = (p[0], p[12], p[11])
        rc_expo = (p[1], p[13], p[10])
        limits = struct.unpack_from("<3H", p, 16)
        return cls(RATES_TYPES[p[22]], rc_rate, rc_expo, (p[2], p[3], p[4]), limits)

    def rate_deg_s(self, axis: int, deflection: float) -> float:
        """Betaflight's setpoint [deg/s] for a stick deflection in [-1, 1] (src/main/fc/rc.c, applyRates)."""
        d = float(np.clip(deflection, -1.0, 1.0))
        a = abs(d)
        rc_rate, expo, rate = self.rc_rate[axis], self.rc_expo[axis] / 100.0, self.rate[axis]
        if self.rates_type == "actual":
            center = rc_rate * 10.0
            stick_movement = max(0.0, rate * 10.0 - center)
            out = d * center + stick_movement * a * (d ** 5 * expo + d * (1 - expo))
        elif self.rates_type == "betaflight":
            if expo:
                d = d * a ** 3 * expo + d * (1 - expo)
            r = rc_rate / 100.0
            if r > 2.0:
                r += RC_RATE_INCREMENTAL * (r - 2.0)
            out = 200.0 * r * d
            if rate:
                out /= min(max(1.0 - a * rate / 100.0, 0.01), 1.0)
        else:
            raise LinkError(f"Betaflight rates type {self.rates_type!r} is not supported by the ctbr link: set "
                            "rates_type to ACTUAL or BETAFLIGHT on the flight controller (Configurator: Rateprofile)")
        limit = self.rate_limit_deg_s[axis]
        return float(np.clip(out, -limit, limit))

    def max_rate_deg_s(self, axis: int) -> float:
        return self.rate_deg_s(axis, 1.0)

    def deflection(self, axis: int, rate_deg_s: float) -> float:
        """The inverse: the stick deflection in [-1, 1] that makes Betaflight fly this rate (clipped to
        what full stick gives). The curves are odd and increasing, so bisection on |deflection| is exact."""
        target = abs(float(rate_deg_s))
        if target >= self.max_rate_deg_s(axis):
            return math.copysign(1.0, rate_deg_s)
        lo, hi = 0.0, 1.0
        for _ in range(40):                       # 1e-12 in deflection
            mid = 0.5 * (lo + hi)
            if self.rate_deg_s(axis, mid) < target:
                lo = mid
            else:
                hi = mid
        return math.copysign(0.5 * (lo + hi), rate_deg_s)


def rates_flu_to_channels(rates_flu_rad_s, profile: RateProfile) -> list[int]:
    """Body rates FLU [rad/s] -> roll, pitch, yaw channel values [us]. Betaflight's axes are FLU
    (roll right, pitch nose down, yaw counter-clockwise positive) and its yaw stick is reversed."""
    sign = (1.0, 1.0, -1.0)
    return [int(round(RC_MID_US + 500.0 * sign[k] * profile.deflection(k, math.degrees(float(r)))))
            for k, r in enumerate(rates_flu_rad_s)]
