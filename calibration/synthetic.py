"""Synthetic stand logs with known truth, from the sim's own motor model (`sim.core.motor_response`).

For testing the calibration end to end: thrust = kf w^2 and torque = km w^2 of the true rotor
speed, with realistic sensor noise, a load-cell offset (the stand is not tared), a reversed torque
sign, and a few inserted faults (an RPM dropout, spikes) whose count is returned so a test can
check that each was rejected and counted.

Timing convention (as a stand records it): row k at t_s = k dt holds the throttle commanded at
that instant and the rotor speed measured at that instant, i.e. before the new command acts.
"""
from __future__ import annotations

import numpy as np

from sim.core import motor_response
from thrust_stand.log import StandLogWriter

from calibration.data import RAD_S_PER_RPM

THRUST_OFFSET_N = 0.05
TORQUE_OFFSET_NM = -0.002


def _write(path: str, columns: dict, meta: dict) -> None:
    n = len(columns["t_s"])
    with StandLogWriter(path, meta=meta) as out:
        for k in range(n):
            out.write(**{name: float(v[k]) for name, v in columns.items() if np.isfinite(v[k])})


def _sensors(omega, params, rng, v_frac, battery_v):
    """Measured rpm, thrust, torque and voltage for true rotor speeds `omega` (rad/s)."""
    thrust = params["kf_n_per_rad2s2"] * omega ** 2
    torque = params["km_nm_per_rad2s2"] * omega ** 2
    t_max = params["kf_n_per_rad2s2"] * params["omega_max_rad_s"] ** 2
    q_max = params["km_nm_per_rad2s2"] * params["omega_max_rad_s"] ** 2
    n = len(omega)
    rpm = omega / RAD_S_PER_RPM
    return {
        "rpm": np.where(omega > 0, rpm * (1 + 0.003 * rng.standard_normal(n)) + 5 * rng.standard_normal(n), 0.0),
        "thrust_n": THRUST_OFFSET_N + thrust * (1 + 0.004 * rng.standard_normal(n)) + 0.002 * t_max * rng.standard_normal(n),
        # the stand's torque cell reads this motor's reaction negative
        "torque_nm": TORQUE_OFFSET_NM - torque * (1 + 0.004 * rng.standard_normal(n)) + 0.003 * q_max * rng.standard_normal(n),
        "voltage_v": battery_v * v_frac * (1 + 0.002 * rng.standard_normal(n)),
    }


def _insert_faults(cols: dict, rng, spinning: np.ndarray) -> dict:
    """An RPM dropout (3 rows reading 0), two thrust spikes, one torque spike, one rpm spike."""
    idx = rng.choice(np.flatnonzero(spinning[5:-5]) + 5, size=5, replace=False)
    idx.sort()
    k = idx[0]
    cols["rpm"][k:k + 3] = 0.0
    cols["thrust_n"][idx[1]] *= 1.8
    cols["thrust_n"][idx[2]] *= 0.4
    cols["torque_nm"][idx[3]] *= 2.0
    cols["rpm"][idx[4]] *= 1.5
    return {"zero_rpm": 3, "spikes": 4}


def synthetic_sweep(path: str, params: dict, dt_s: float = 0.01, duration_s: float = 20.0, v_frac: float = 1.0,
                    seed: int = 0, faults: bool = True) -> dict:
    """A slow throttle ramp 0.05 -> 1 -> 0.05 after 1 s with the motor off (for the tare).
    Returns the inserted fault counts."""
    rng = np.random.default_rng(seed)
    n = int(round(duration_s / dt_s))
    t = np.arange(n) * dt_s
    off = t < 1.0
    phase = np.clip((t - 1.0) / (duration_s - 1.0), 0, 1)
    u = np.where(off, 0.0, 0.05 + 0.95 * (1 - np.abs(2 * phase - 1)))
    omega = np.r_[0.0, motor_response(params, u[~off], dt_s, v_frac=v_frac)[:-1]] if (~off).any() else np.zeros(0)
    omega = np.r_[np.zeros(int(off.sum())), omega].astype(np.float64)
    cols = {"t_s": t, "throttle": u, **_sensors(omega, params, rng, v_frac, params["battery_v_nominal"])}
    inserted = _insert_faults(cols, rng, ~off) if faults else {}
    _write(path, cols, {"procedure": "sweep", "stand": "synthetic (sim.core.motor_response)"})
    return inserted


def synthetic_steps(path: str, params: dict, dt_s: float = 0.002, hold_s: float = 0.3, n_steps: int = 12,
                    seed: int = 0, faults: bool = True, with_rpm: bool = True) -> dict:
    """Throttle steps between levels in 0.2..0.9, alternately up and down, each held hold_s, from
    the steady speed of the first level. Returns the inserted fault counts."""
    rng = np.random.default_rng(seed)
    levels = [0.3]
    for k in range(n_steps):
        lo, hi = (levels[-1] + 0.15, 0.9) if k % 2 == 0 else (0.2, levels[-1] - 0.15)
        levels.append(float(rng.uniform(lo, max(hi, lo))))
    per = int(round(hold_s / dt_s))
    u = np.repeat(levels, per)
    t = np.arange(len(u)) * dt_s
    c = params["throttle_to_omega_rad_s"]
    omega0 = c[0] + c[1] * u[0] + c[2] * u[0] ** 2
    omega = np.r_[omega0, motor_response(params, u, dt_s, omega0_rad_s=omega0)[:-1]].astype(np.float64)
    cols = {"t_s": t, "throttle": u, **_sensors(omega, params, rng, 1.0, params["battery_v_nominal"])}
    inserted = _insert_faults(cols, rng, omega > 0) if faults else {}
    if not with_rpm:
        cols["rpm"] = np.full(len(t), np.nan)
    _write(path, cols, {"procedure": "steps", "stand": "synthetic (sim.core.motor_response)"})
    return inserted
