"""Stand data in, in SI, and the row screening that rejects and counts sensor faults.

`load_log` reads any of the stand formats the calibration accepts, detected from the header:
our stand log (`thrust_stand.log`), a Tyto/RCbenchmark export and the Bitcraze-style CSV of a
whole Crazyflie on a stand (`weight[g]` = total thrust of 4 motors, `pwm` 0..65535, `rpm1..rpm4`).
All come back as a `thrust_stand.log.StandLog` describing ONE motor.

`screen_log` turns a log into `Rows`: throttle, rotor speed in rad/s, tared thrust and torque,
and for every row whether it is a fault (and which), a stopped rotor, or steady (a step test's
transients are not). Faults are rejected and counted, never silently absorbed:

- `motor_dropout` / `motors_disagree`: on a multi-motor log, one motor reads 0 or >15 % off the others;
- `zero_rpm`: the rotor speed reads 0 while the load cell shows thrust (a sensor dropout);
- `spike_rpm` / `spike_thrust` / `spike_torque`: a single sample off both its neighbours;
- `negative_rpm`: not a speed.
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field

import numpy as np

from thrust_stand.log import COLUMNS, StandLog, read_stand_log
from sim.core import GRAVITY_M_S2 as G_M_S2      # the C core's g: the one value

RAD_S_PER_RPM = 2.0 * math.pi / 60.0
ESC_RANGE_US = (1000.0, 2000.0)   # the usual PWM ESC range: throttle 0 at 1000 us, 1 at 2000 us
MIN_STEP = 0.05                   # a throttle change this large (of full throttle) is a step
MIN_HOLD_ROWS = 5                 # ... when the new throttle is then held this many rows
IDLE_THROTTLE = 0.02              # at or below this, with the rotor at rest, a row is a tare row
MAX_DROPOUT_S = 0.1               # a rotor cannot stop and restart faster than this


#: fault reason -> the column it makes unusable
FAULT_COLUMN = {"negative_rpm": "omega_rad_s", "motor_dropout": "omega_rad_s", "motors_disagree": "omega_rad_s",
                "spike_rpm": "omega_rad_s", "zero_rpm": "omega_rad_s",
                "spike_thrust": "thrust_n", "spike_torque": "torque_nm"}


class CalibrationError(ValueError):
    """Data that cannot give the asked-for fit; the message says what is wrong and what to do."""


# ---------------------------------------------------------------- reading

def sniff_format(path: str) -> str:
    """'stand_log', 'tyto' or 'bitcraze', from the CSV header."""
    if not os.path.exists(path):
        raise CalibrationError(f"{path}: no such file")
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        header = next(csv.reader(f), None)
    if not header or not any(h.strip() for h in header):
        raise CalibrationError(f"{path}: the file is empty (expected a stand log with a header: {','.join(COLUMNS)})")
    cells = [h.strip() for h in header]
    if "t_s" in cells:
        return "stand_log"
    if "weight[g]" in cells and "pwm" in cells:
        return "bitcraze"
    if any(c.startswith(("Thrust (", "ESC signal")) for c in cells):
        return "tyto"
    raise CalibrationError(
        f"{path}: unknown header {','.join(cells[:6])}...: expected a Skyloop stand log ({','.join(COLUMNS)}), "
        "a Tyto/RCbenchmark export (Time (s),ESC signal (µs),...,Thrust (N),...) or a Bitcraze stand CSV (weight[g],pwm,...)")


def load_log(path: str, rpm_columns: tuple[str, ...] | None = None) -> StandLog:
    """Any accepted stand format as one motor's StandLog (SI; `meta['source_format']` says which).
    `rpm_columns`: for a Bitcraze stand CSV, the rpm columns to trust (default: all four)."""
    kind = sniff_format(path)
    if kind == "stand_log":
        stand_log = read_stand_log(path)
    elif kind == "tyto":
        from calibration.tyto import read_tyto
        stand_log = read_tyto(path)
    else:
        stand_log = read_bitcraze_csv(path, rpm_columns=rpm_columns)
    stand_log.meta.setdefault("source_format", kind)
    if len(stand_log) == 0:
        raise CalibrationError(f"{path}: no data rows, only a header; was the run cut off before the first sample?")
    return stand_log


def _read_numeric_csv(path: str, required: tuple[str, ...], keep=None) -> dict:
    """{header cell: float array} of the numeric columns of a CSV (those `keep(cell)` accepts,
    default all); errors name the line."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader)]
        missing = [c for c in required if c not in header]
        if missing:
            raise CalibrationError(f"{path}: line 1: missing column(s) {missing}; the header is {','.join(header)}")
        wanted = [k for k, h in enumerate(header) if h and (keep is None or keep(h))]
        rows = []
        for lineno, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) <= max(wanted):
                raise CalibrationError(f"{path}: line {lineno}: {len(row)} cells, the header has {len(header)} "
                                       "(a truncated last line? delete it)")
            try:
                rows.append([float(row[k]) if row[k].strip() else math.nan for k in wanted])
            except ValueError:
                raise CalibrationError(f"{path}: line {lineno}: a cell that is not a number in {row!r}") from None
    table = np.asarray(rows, dtype=np.float64).reshape(-1, len(wanted))
    return {header[k]: table[:, j] for j, k in enumerate(wanted)}


def read_bitcraze_csv(path: str, motors: int = 4, rpm_columns: tuple[str, ...] | None = None) -> StandLog:
    """The Bitcraze stand CSV (a whole Crazyflie, `motors` motors driven together) as one motor.

    thrust_n = weight[g] / motors (g to N); rpm = RMS of the motors' rpm, so that
    kf * (RMS omega)^2 is exactly the mean thrust per motor; throttle = pwm / 65535; voltage_v =
    the Crazyflie's own battery reading vbat[V] (the voltage its PWM switches); current_a = i[A] /
    motors. The per-motor speeds stay in data['rpm_m1'...] for the motor-disagreement check.
    There is no time column: t_s is NaN (no step-response fit from this format).
    `rpm_columns` (e.g. ('rpm4',)): trust only these speed sensors (the others are left out, and said so).
    A weight[g] column of exact zeros while the motors spin is a load cell that was not read: no thrust.
    """
    all_rpm = tuple(f"rpm{k}" for k in range(1, motors + 1))
    rpm_cols = tuple(rpm_columns) if rpm_columns else all_rpm
    unknown = [c for c in rpm_cols if c not in all_rpm]
    if unknown:
        raise CalibrationError(f"{path}: rpm column(s) {unknown}: a Bitcraze stand CSV has {', '.join(all_rpm)}")
    cols = _read_numeric_csv(path, ("weight[g]", "pwm", "vbat[V]") + all_rpm)
    per_motor = np.column_stack([cols[c] for c in rpm_cols])
    n = len(per_motor)
    data = {name: np.full(n, math.nan) for name in COLUMNS}
    data.update(
        throttle=cols["pwm"] / 65535.0,
        rpm=np.sqrt(np.mean(per_motor ** 2, axis=1)),
        thrust_n=cols["weight[g]"] / motors * 1e-3 * G_M_S2,
        voltage_v=cols["vbat[V]"],
    )
    if "i[A]" in cols:
        data["current_a"] = cols["i[A]"] / motors
    for k, c in enumerate(rpm_cols, start=1):
        data[f"rpm_m{k}"] = per_motor[:, k - 1]
    meta = {"source_format": "bitcraze", "motors_in_log": motors,
            "note": f"thrust_n = weight[g]/{motors} in N, rpm = RMS of {', '.join(rpm_cols)}, throttle = pwm/65535",
            "columns_used": {"thrust_n": "weight[g]", "throttle": "pwm", "voltage_v": "vbat[V]", "rpm": "+".join(rpm_cols)}}
    if rpm_columns:
        meta["rpm_columns_not_used"] = [c for c in all_rpm if c not in rpm_cols]
    spinning = np.any(per_motor > 0, axis=1)
    if spinning.any() and np.all(cols["weight[g]"][spinning] == 0):
        data["thrust_n"] = np.full(n, math.nan)
        meta["thrust_note"] = "weight[g] reads exactly 0 on every row with the motors spinning: the load cell was not read"
        del meta["columns_used"]["thrust_n"]
    return StandLog(path=path, data=data, meta=meta)


# ---------------------------------------------------------------- screening

@dataclass
class Rows:
    """One log, in SI, screened. Arrays are per row; NaN = not measured."""
    path: str
    t_s: np.ndarray
    throttle: np.ndarray
    omega_rad_s: np.ndarray
    thrust_n: np.ndarray          # tared (idle offset removed)
    torque_nm: np.ndarray         # tared, sign chosen so that it is positive when spinning
    voltage_v: np.ndarray
    rising: np.ndarray            # 1 where the throttle has been rising, 0 falling, NaN flat or unknown
    faults: dict                  # reason -> bool per row (see FAULT_COLUMN)
    stopped: np.ndarray           # the rotor is at rest (idle rows: used for the tare only)
    steady: np.ndarray            # not inside a step's transient
    steps: list = field(default_factory=list)   # held throttle steps: (first row, end row)
    tare: dict = field(default_factory=dict)    # column -> offset removed, plus 'rows'
    meta: dict = field(default_factory=dict)
    current_a: np.ndarray | None = None   # per motor, NaN = not measured

    def __len__(self) -> int:
        return len(self.t_s)

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def faulty(self, columns=None, among=None) -> tuple[np.ndarray, dict]:
        """Rows with a fault in any of `columns` (default: any fault), and the count by reason of
        those among the rows `among` (default all; a row counts once, under its first reason)."""
        mask = np.zeros(len(self), dtype=bool)
        counts = {}
        for reason, rows in self.faults.items():
            if columns is None or FAULT_COLUMN[reason] in columns:
                new = rows & ~mask & (True if among is None else among)
                if new.any():
                    counts[reason] = int(new.sum())
                mask |= rows
        return mask, counts


def throttle_of(stand_log: StandLog, esc_range_us=ESC_RANGE_US) -> np.ndarray:
    """Throttle 0..1: the throttle column, else esc_us mapped through the ESC range."""
    u = np.array(stand_log.data["throttle"], dtype=np.float64)
    esc = stand_log.data["esc_us"]
    lo, hi = esc_range_us
    from_esc = ~np.isfinite(u) & np.isfinite(esc)
    u[from_esc] = (esc[from_esc] - lo) / (hi - lo)
    return u


def spike_rows(x: np.ndarray, rel_floor: float = 0.01, k_sigma: float = 8.0) -> np.ndarray:
    """Single samples off both their neighbours in the same direction (|x - median of 3| large).

    A monotone run (a ramp, a step response) is untouched by a 3-point median, so only isolated
    samples are flagged. Threshold: k_sigma robust sigmas of the residual, at least rel_floor of
    the signal's full scale."""
    out = np.zeros(len(x), dtype=bool)
    ok = np.flatnonzero(np.isfinite(x))
    if len(ok) < 5:
        return out
    v = x[ok]
    med3 = np.median(np.stack([np.r_[v[0], v[:-1]], v, np.r_[v[1:], v[-1]]]), axis=0)
    resid = v - med3
    moving = resid[resid != 0]
    sigma = 1.4826 * np.median(np.abs(moving)) if len(moving) else 0.0
    threshold = max(k_sigma * sigma, rel_floor * np.percentile(np.abs(v), 99), 1e-12)
    out[ok] = np.abs(resid) > threshold
    return out


def short_zero_runs(omega: np.ndarray, t_s: np.ndarray) -> np.ndarray:
    """Runs of zero speed between spinning rows, shorter than MAX_DROPOUT_S (2 rows without time):
    a rotor cannot stop and spin up again that fast, so the sensor dropped out."""
    out = np.zeros(len(omega), dtype=bool)
    zero = omega == 0
    spinning = np.isfinite(omega) & (omega > 0)
    k = 0
    while k < len(omega):
        if not zero[k]:
            k += 1
            continue
        end = k
        while end < len(omega) and zero[end]:
            end += 1
        flanked = k > 0 and spinning[k - 1] and end < len(omega) and spinning[end]
        if flanked:
            short = (t_s[end] - t_s[k - 1] <= MAX_DROPOUT_S) if np.isfinite(t_s[[k - 1, end]]).all() else end - k <= 2
            out[k:end] = short
        k = end
    return out


def find_steps(throttle: np.ndarray, min_step: float = MIN_STEP, min_hold_rows: int = MIN_HOLD_ROWS) -> list[tuple[int, int]]:
    """Held throttle steps, as (first row, end row): the throttle jumps by >= min_step and then
    stays put (within min_step / 50) for at least min_hold_rows rows; `end` is where it moves again."""
    u = throttle
    tol = min_step / 50
    steps = []
    for k in np.flatnonzero(np.abs(np.diff(u)) >= min_step) + 1:
        moved = np.flatnonzero(~(np.abs(u[k:] - u[k]) <= tol))
        end = int(k + (moved[0] if len(moved) else len(u) - k))
        if end - k >= min_hold_rows:
            steps.append((int(k), end))
    return steps


def _steady_rows(n: int, steps: list[tuple[int, int]]) -> np.ndarray:
    """Every row but the first half of each held step (where the rotor is still getting there)."""
    steady = np.ones(n, dtype=bool)
    for k, end in steps:
        steady[k:(k + end) // 2] = False
    return steady


def _rising(u: np.ndarray) -> np.ndarray:
    """1 where the last change of throttle was up, 0 where down, NaN before any change."""
    du = np.diff(u, prepend=np.nan)
    last = np.where(np.abs(du) > 0, np.sign(du), np.nan)
    idx = np.where(np.isfinite(last), np.arange(len(u)), 0)
    np.maximum.accumulate(idx, out=idx)
    out = last[idx]
    return np.where(np.isfinite(out), (out > 0).astype(float), np.nan)


def _tare(x: np.ndarray, idle: np.ndarray) -> tuple[float, float]:
    """(offset, noise) of a load cell from its idle rows; (0, nan) when there are fewer than 3."""
    v = x[idle & np.isfinite(x)]
    if len(v) < 3:
        return 0.0, math.nan
    offset = float(np.median(v))
    return offset, float(1.4826 * np.median(np.abs(v - offset)))


def screen_log(stand_log: StandLog, esc_range_us=ESC_RANGE_US, min_step: float = MIN_STEP) -> Rows:
    """A log in SI with its faults flagged (see the module doc), tared, steps and steady rows found."""
    d = stand_log.data
    n = len(stand_log)
    u = throttle_of(stand_log, esc_range_us)
    omega = d["rpm"] * RAD_S_PER_RPM
    thrust, torque = d["thrust_n"].copy(), d["torque_nm"].copy()
    faults = {}

    def flag(mask, reason):
        faults[reason] = faults.get(reason, np.zeros(n, dtype=bool)) | mask

    def clean():
        return ~np.any([np.zeros(n, dtype=bool), *faults.values()], axis=0)

    flag(omega < 0, "negative_rpm")
    motors = [d[k] for k in sorted(d) if k.startswith("rpm_m")]
    if len(motors) > 1:
        per_motor = np.column_stack(motors)
        med = np.median(per_motor, axis=1)
        spinning = med > 0
        flag(spinning & np.any(per_motor <= 0, axis=1), "motor_dropout")
        rel = np.abs(per_motor - med[:, None]) / np.where(spinning, med, 1.0)[:, None]
        flag(spinning & np.any(rel > 0.15, axis=1), "motors_disagree")
    for name, x in (("rpm", omega), ("thrust", thrust), ("torque", torque)):
        flag(spike_rows(x), f"spike_{name}")

    has_rpm = bool(np.isfinite(omega).any())
    if has_rpm:
        flag(short_zero_runs(omega, d["t_s"]), "zero_rpm")
    # tare rows: rotor at rest (or no rpm) with the throttle commanded off
    idle = (omega == 0) & ~(u > IDLE_THROTTLE) if has_rpm else (u <= IDLE_THROTTLE)
    tare = {"rows": int(np.sum(idle & clean()))}
    for name, x in (("thrust_n", thrust), ("torque_nm", torque)):
        offset, noise = _tare(x, idle & clean())
        x -= offset
        tare[name] = offset
        if name == "thrust_n" and has_rpm and math.isfinite(noise):
            # a rotor reading 0 while the (tared) load cell clearly shows thrust is an RPM dropout
            threshold = max(6 * noise, 0.02 * np.nanpercentile(np.abs(x), 99))
            flag((omega == 0) & (x > threshold), "zero_rpm")
    moving = (omega > 0) if has_rpm else ~idle
    q = torque[moving & clean() & np.isfinite(torque)]
    if len(q) and np.median(q) < 0:
        torque = -torque   # the stand's torque sign depends on the rotation direction; km is a magnitude
        tare["torque_sign"] = -1
    stopped = ((omega == 0) if has_rpm else idle) & clean()
    steps = find_steps(u, min_step) if np.isfinite(d["t_s"]).all() else []
    return Rows(path=stand_log.path, t_s=d["t_s"], throttle=u, omega_rad_s=omega, thrust_n=thrust, torque_nm=torque,
                voltage_v=d["voltage_v"], rising=_rising(u), faults={r: m for r, m in faults.items() if m.any()},
                stopped=stopped, steady=_steady_rows(n, steps), steps=steps, tare=tare, meta=dict(stand_log.meta),
                current_a=d["current_a"])
