"""Hover closure: does the calibrated kf hold the drone up at the rotor speeds it really hovers at?

    closure = sum_i kf w_i^2 / (m g)        (1.0 = the profile predicts exactly the weight)

The hover speeds come from the command line or from a flight log with per-motor RPM columns
(e.g. the Crazyflie uSD log's rpm.m1..rpm.m4), over a window where the drone hovers.
"""
from __future__ import annotations

import re

import numpy as np

from calibration.data import G_M_S2, RAD_S_PER_RPM, CalibrationError, _read_numeric_csv, spike_rows

#: flight-log time columns we know -> factor to seconds
TIME_COLUMNS = {"t_s": 1.0, "time_s": 1.0, "timestamp_ms": 1e-3, "timestamp_us": 1e-6, "Time (s)": 1.0}
RPM_COLUMN = re.compile(r"^(?:motor_)?rpm[._]?m?_?(\d)$", re.IGNORECASE)


def hover_closure(kf_n_per_rad2s2: float, hover_rpm, mass_kg: float, motors: int = 4) -> dict:
    """Predicted hover thrust vs weight. `hover_rpm`: one speed for all motors, or one per motor."""
    rpm = np.atleast_1d(np.asarray(hover_rpm, dtype=np.float64))
    if rpm.size not in (1, motors) or not np.all(np.isfinite(rpm) & (rpm > 0)):
        raise CalibrationError(f"hover rpm {hover_rpm!r}: give one positive speed, or {motors} (one per motor)")
    omega = np.broadcast_to(rpm * RAD_S_PER_RPM, (motors,))
    thrust = float(kf_n_per_rad2s2 * np.sum(omega ** 2))
    weight = mass_kg * G_M_S2
    return {"hover_rpm": [float(r) for r in rpm], "predicted_thrust_n": thrust, "weight_n": weight,
            "mass_kg": mass_kg, "closure": thrust / weight, "error_pct": 100.0 * (thrust / weight - 1.0)}


def read_hover_rpm(path: str, window_s: float = 1.0, start_s: float = 0.0) -> dict:
    """Per-motor median RPM over [start_s, start_s + window_s) of a flight log (time from its first
    row). Rows where a motor reads 0, NaN or a spike are rejected and counted."""
    cols = _read_numeric_csv(path, (), keep=lambda c: c in TIME_COLUMNS or bool(RPM_COLUMN.match(c)))
    rpm_names = sorted((c for c in cols if RPM_COLUMN.match(c)), key=lambda c: int(RPM_COLUMN.match(c).group(1)))
    time_name = next((c for c in TIME_COLUMNS if c in cols), None)
    if not rpm_names or time_name is None:
        raise CalibrationError(f"{path}: a hover log needs a time column ({', '.join(TIME_COLUMNS)}) and per-motor "
                               f"rpm columns (rpm.m1..rpm.m4, rpm1..rpm4, motor_rpm_1...); found {sorted(cols) or 'neither'}")
    t = cols[time_name] * TIME_COLUMNS[time_name]
    t = t - t[np.isfinite(t)][0]
    rpm = np.column_stack([cols[c] for c in rpm_names])
    window = (t >= start_s) & (t < start_s + window_s)
    bad = ~np.all(np.isfinite(rpm) & (rpm > 0), axis=1)
    for k in range(rpm.shape[1]):
        bad |= spike_rows(np.where(window, rpm[:, k], np.nan))
    use = window & ~bad
    if use.sum() < 5:
        raise CalibrationError(f"{path}: {int(use.sum())} good rows with all motors spinning in "
                               f"t = {start_s:g}..{start_s + window_s:g} s; choose a window where the drone hovers")
    return {"file": path, "columns": rpm_names, "window_s": [start_s, start_s + window_s],
            "rpm": [float(v) for v in np.median(rpm[use], axis=0)],
            "rows_used": int(use.sum()), "rows_rejected": int((window & bad).sum())}
