"""Motor time constants (up, down) and pure delay from step-response runs.

Each held throttle step (see `calibration.data.find_steps`) is fitted on its own with the sim's
motor model for one step: a pure delay d, then a first-order lag with time constant tau,

    y(t) = y0                                    for t < t_step + d
    y(t) = y1 + (y0 - y1) exp(-(t - t_step - d) / tau)   after,

where y is the rotor speed, or sqrt(thrust) when the log has no rpm (thrust ~ w^2; tau and d
do not depend on the scale). t_step is the time of the first row that shows the new throttle.
Steps up give motor_tau_up_s, steps down motor_tau_down_s, all steps the delay; each is the
median over its steps, with a 95 % CI from their spread (or from the fit's covariance when there
is one step). Steps that cannot be trusted are rejected and counted by reason.
"""
from __future__ import annotations

import logging
import math

import numpy as np
from scipy import optimize, stats

from calibration.data import MIN_STEP, CalibrationError, Rows
from calibration.fit import Fit

log = logging.getLogger(__name__)

MIN_STEP_R2 = 0.9


def step_signal(rows: Rows) -> tuple[np.ndarray, str]:
    """What the steps are fitted on: rotor speed when measured, else sqrt(tared thrust)."""
    if np.isfinite(rows.omega_rad_s).any():
        return rows.omega_rad_s, "rotor speed"
    if np.isfinite(rows.thrust_n).any():
        return np.sqrt(np.clip(rows.thrust_n, 0.0, None)), "sqrt(thrust)"
    raise CalibrationError(f"{rows.name}: no rpm and no thrust_n column: a step response needs either")


def _model(t, t_step, y0, y1, tau, delay):
    s = t - t_step - delay
    return np.where(s < 0, y0, y1 + (y0 - y1) * np.exp(-np.clip(s, 0, None) / tau))


def fit_one_step(t: np.ndarray, y: np.ndarray, k_step: int, pre_start: int, end: int, noise: float) -> dict:
    """Fits one step: rows pre_start..k_step-1 are the level before it, k_step..end-1 the response
    (NaN rows are left out).
    Returns the step's figures and, under 'reject', why it cannot be trusted ('' if it can)."""
    t_step = t[k_step]
    dt = float(np.median(np.diff(t[pre_start:end])))
    before, after = y[pre_start:k_step], y[k_step:end]
    if np.isfinite(before).sum() < 2 or np.isfinite(after).sum() < 4:  # e.g. a log that starts mid-step
        return {"t_step_s": float(t_step), "direction": "?", "y0": float("nan"), "y1": float("nan"),
                "rows": end - k_step, "reject": "no_level_before_or_after"}
    y0, y1 = float(np.nanmedian(before[-max(3, len(before) // 2):])), float(np.nanmedian(after[-max(3, len(after) // 4):]))
    out = {"t_step_s": float(t_step), "direction": "up" if y1 > y0 else "down", "y0": y0, "y1": y1,
           "rows": end - k_step, "reject": ""}   # the rows before the step count with the step before
    span = t[end - 1] - t_step
    if abs(y1 - y0) < 10 * noise:
        return {**out, "reject": "step_too_small"}
    if min(y0, y1) <= 0.02 * max(y0, y1):
        return {**out, "reject": "from_or_to_standstill"}   # start-up / braking are not the lag model
    frac = (after - y0) / (y1 - y0)
    k10 = int(np.argmax(frac > 0.1))
    k63 = int(np.argmax(frac > 0.632))
    d_guess = max(t[k_step + k10] - t_step - 0.1 * max(t[k_step + k63] - t[k_step + k10], dt), 0.0)
    tau_guess = max(t[k_step + k63] - t_step - d_guess, dt / 2)
    tt, yy = t[pre_start:end], y[pre_start:end]
    ok = np.isfinite(yy)
    tt, yy = tt[ok], yy[ok]

    def resid(x):
        return _model(tt, t_step, *x) - yy

    lo = [-np.inf, -np.inf, dt / 20, 0.0]
    hi = [np.inf, np.inf, span, span / 2]
    best = None
    for d0 in (d_guess, max(d_guess - dt, 0.0), d_guess + dt):   # the kink makes d a little multi-modal
        x0 = [y0, y1, min(tau_guess, span * 0.9), min(d0, span / 2 * 0.99)]
        sol = optimize.least_squares(resid, x0, bounds=(lo, hi), loss="soft_l1", f_scale=max(3 * noise, 1e-12),
                                     x_scale=[abs(y1 - y0), abs(y1 - y0), tau_guess, dt])
        if best is None or sol.cost < best.cost:
            best = sol
    y0f, y1f, tau, delay = (float(v) for v in best.x)
    r = resid(best.x)
    sst = float(np.sum((yy - yy.mean()) ** 2))
    r2 = 1.0 - float(r @ r) / sst if sst > 0 else math.nan
    dof = max(len(yy) - 4, 1)
    cov = (float(r @ r) / dof) * np.linalg.pinv(best.jac.T @ best.jac)
    ci = stats.t.ppf(0.975, dof) * np.sqrt(np.clip(np.diag(cov), 0, None))
    out.update(y0=y0f, y1=y1f, tau_s=tau, delay_s=delay, tau_ci95=float(ci[2]), delay_ci95=float(ci[3]), r2=r2,
               ssr=float(r @ r), sst=sst, dt_s=dt, t=tt - t_step, y=yy, fit=_model(tt, t_step, *best.x))
    if r2 < MIN_STEP_R2:
        out["reject"] = "poor_fit"
    elif tau > span / 3:
        out["reject"] = "not_settled"          # the next step came before the response settled
    elif tau < dt / 10:
        out["reject"] = "faster_than_sampling"
    elif delay >= span / 2 * 0.99:
        out["reject"] = "delay_at_bound"
    return out


def _noise(y: np.ndarray) -> float:
    d = np.diff(y[np.isfinite(y)])
    return float(1.4826 * np.median(np.abs(d)) / math.sqrt(2)) if len(d) else 0.0


def fit_steps(rows_list: list[Rows], min_step: float = MIN_STEP) -> list[Fit]:
    """motor_tau_up_s, motor_tau_down_s and motor_delay_s (those the steps support) from step logs."""
    results, files, signals = [], [], set()
    for rows in rows_list:
        if not np.isfinite(rows.t_s).all():
            raise CalibrationError(f"{rows.name}: no time column (t_s): a step response needs time stamps")
        if not rows.steps:
            u = rows.throttle[np.isfinite(rows.throttle)]
            largest = float(np.max(np.abs(np.diff(u)))) if len(u) > 1 else 0.0
            raise CalibrationError(
                f"{rows.name}: no throttle steps: the throttle never jumps by {min_step:g} or more and then holds "
                f"(largest change between rows: {largest:.3g}). Record a step test (`skyloop stand run steps`) "
                "or lower --min-step")
        y, what = step_signal(rows)
        columns = ("omega_rad_s",) if what == "rotor speed" else ("thrust_n",)
        faulty, _ = rows.faulty(columns)
        y = np.where(faulty, np.nan, y)   # faulty rows do not take part
        signals.add(what)
        noise = _noise(y)
        prev = 0
        for k, end in rows.steps:
            pre_start = max(k - (k - prev) // 3, k - (end - k))   # the settled end of the level before
            step = fit_one_step(rows.t_s, y, k, pre_start, end, noise)
            step["file"] = rows.name
            window = np.zeros(len(rows), dtype=bool)
            window[k:end] = True
            step["faults"] = rows.faulty(columns, among=window)[1]
            results.append(step)
            prev = k
        files.append(rows.name)
    good = [s for s in results if not s["reject"]]
    reasons = {}
    for s in results:
        if s["reject"]:
            reasons[s["reject"]] = reasons.get(s["reject"], 0) + s["rows"]
    for s in good:
        for reason, count in s["faults"].items():
            reasons[reason] = reasons.get(reason, 0) + count
    if not good:
        why = ", ".join(sorted({s["reject"] for s in results}))
        raise CalibrationError(f"{', '.join(files)}: {len(results)} step(s), none usable ({why}); "
                               "steps need to settle before the next one and be sampled faster than the motor's lag")
    ssr = sum(s["ssr"] for s in good)
    sst = sum(s["sst"] for s in good)
    r2 = 1.0 - ssr / sst
    method_base = (f"delayed first-order model fitted to the {' / '.join(sorted(signals))} of each throttle step "
                   f"(>= {min_step:g}), median over steps")
    fits = []
    for field_name, subset, key in (("motor_tau_up_s", [s for s in good if s["direction"] == "up"], "tau"),
                                    ("motor_tau_down_s", [s for s in good if s["direction"] == "down"], "tau"),
                                    ("motor_delay_s", good, "delay")):
        if not subset:
            log.warning("no usable step %s in %s: %s kept from the base profile", field_name.split("_")[2],
                        ", ".join(files), field_name)
            continue
        values = np.array([s[f"{key}_s"] for s in subset])
        if len(values) > 1:
            ci = float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
        else:
            ci = subset[0][f"{key}_ci95"]
        used_rows = sum(s["rows"] - sum(s["faults"].values()) for s in subset)
        fits.append(Fit(field=field_name, value=float(np.median(values)), ci95=ci, r2=r2, rows_used=int(used_rows),
                        rows_rejected=sum(reasons.values()), rejected=dict(sorted(reasons.items())),
                        method=f"{method_base} ({len(values)} step(s))", files=files,
                        extra={"per_step_s": [float(v) for v in values]},
                        plot={"steps": [s for s in subset if key == "tau"]}))
    return fits
