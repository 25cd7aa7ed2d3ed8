"""Robust fits of the steady motor model: T = kf w^2, Q = km w^2, and the throttle -> w curve.

Every fit is a linear least-squares problem solved a few times with sigma clipping (rows more
than `CLIP_SIGMA` robust sigmas off the fit are dropped and counted as `outlier`, and may come
back on the next pass), with a 95 % confidence interval from the fit's covariance. Stand rows
come in time order and their residuals are rarely independent (a lagging load cell, heating):
the covariance is widened by the lag-1 autocorrelation of the residuals, (1 + rho) / (1 - rho),
so that 2000 rows of one slow sweep do not claim the precision of 2000 independent samples.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, stats

from calibration.data import CalibrationError, Rows

CLIP_SIGMA = 5.0
CLIP_PASSES = 6


@dataclass
class Fit:
    """One fitted profile field, with what it came from and how good it is."""
    field: str                  # the profile's field name, e.g. 'kf_n_per_rad2s2'
    value: float | list
    ci95: float | list          # half-width of the 95 % confidence interval (same shape as value)
    r2: float
    rows_used: int
    rows_rejected: int
    rejected: dict              # reason -> rows
    method: str
    files: list
    extra: dict = field(default_factory=dict)   # further figures worth reporting (linear term, ...)
    plot: dict = field(default_factory=dict)    # data for the report's figure

    def source(self) -> dict:
        """The profile's `source` entry for this field."""
        return {"file": ", ".join(self.files), "rows_used": self.rows_used, "rows_rejected": self.rows_rejected,
                "rejected_by_reason": self.rejected, "r2": rounded(self.r2), "ci95": rounded(self.ci95),
                "method": self.method, **({"extra": rounded(self.extra)} if self.extra else {})}


def rounded(x, digits: int = 6):
    if isinstance(x, dict):
        return {k: rounded(v, digits) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [rounded(v, digits) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(f"{float(x):.{digits}g}") if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


@dataclass
class LinearFit:
    coef: np.ndarray
    ci95: np.ndarray
    r2: float
    inliers: np.ndarray         # bool per row
    rms: float
    cov: np.ndarray             # covariance of coef
    ci_widening: float = 1.0    # sqrt((1 + rho) / (1 - rho)) applied to the CI for correlated residuals

    def ci_note(self) -> str:
        return (f", 95 % CI widened x{self.ci_widening:.1f} for residuals correlated row to row"
                if self.ci_widening > 1.1 else "")


def clip_outliers(A: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Rows consistent with y ~ A @ coef: sigma clipping with a robust (MAD) sigma, a few passes."""
    keep = np.ones(len(y), dtype=bool)
    for _ in range(CLIP_PASSES):
        resid = y - A @ np.linalg.lstsq(A[keep], y[keep], rcond=None)[0]
        sigma = 1.4826 * np.median(np.abs(resid[keep] - np.median(resid[keep])))
        new = np.abs(resid) <= CLIP_SIGMA * sigma
        if sigma == 0 or np.array_equal(new, keep) or new.sum() <= A.shape[1] + 1:
            break
        keep = new
    return keep


def robust_lstsq(A: np.ndarray, y: np.ndarray, lower=None, detect: np.ndarray | None = None) -> LinearFit:
    """y ~ A @ coef on the rows that `clip_outliers` keeps, with a 95 % CI from the covariance.

    `detect`: a more flexible design matrix to find outliers with, so that a model that is a
    little too simple (the sim's) does not throw away good rows where it fits worst.
    `lower`: lower bounds of the coefficients (None: free)."""
    n, p = A.shape
    if n <= max(p, 0 if detect is None else detect.shape[1]) + 1:
        raise CalibrationError(f"{n} usable rows for {p} coefficient(s): too few to fit")
    keep = clip_outliers(A if detect is None else detect, y)
    lb = np.full(p, -np.inf) if lower is None else np.asarray(lower, dtype=float)
    coef = optimize.lsq_linear(A[keep], y[keep], bounds=(lb, np.inf)).x
    resid = (y - A @ coef)[keep]
    dof = max(int(keep.sum()) - p, 1)
    ssr = float(resid @ resid)
    sst = float(np.sum((y[keep] - y[keep].mean()) ** 2))
    rho = float(np.clip(np.corrcoef(resid[:-1], resid[1:])[0, 1], 0.0, 0.99)) if len(resid) > 10 and ssr > 0 else 0.0
    cov = ssr / dof * np.linalg.pinv(A[keep].T @ A[keep]) * (1 + rho) / (1 - rho)
    ci95 = stats.t.ppf(0.975, dof) * np.sqrt(np.clip(np.diag(cov), 0, None))
    return LinearFit(coef=coef, ci95=ci95, r2=1.0 - ssr / sst if sst > 0 else math.nan, inliers=keep,
                     rms=math.sqrt(ssr / keep.sum()), cov=cov, ci_widening=math.sqrt((1 + rho) / (1 - rho)))


def _bic(fit: LinearFit, p: int) -> float:
    n = int(fit.inliers.sum())
    return n * math.log(max(fit.rms, 1e-300) ** 2) + p * math.log(n)


def _select(rows_list: list[Rows], columns: tuple[str, ...], quantity: str, optional: tuple[str, ...] = ()):
    """Rows that can feed a fit of `columns`: measured and steady; faults counted, stops skipped.
    `optional` columns come along (NaN where not measured).

    Returns (arrays per column then per optional column, pooled fault counts, the logs that gave
    rows, per-row index into those logs)."""
    picked = {c: [] for c in columns + optional}
    reasons, sources, which = {}, [], []
    for rows in rows_list:
        measured = np.ones(len(rows), dtype=bool)
        for c in columns:
            measured &= np.isfinite(getattr(rows, c))
        candidate = measured & rows.steady & ~rows.stopped
        if not candidate.any():
            continue
        faulty, counts = rows.faulty(columns + optional, among=candidate)
        for r, c in counts.items():
            reasons[r] = reasons.get(r, 0) + c
        use = candidate & ~faulty
        for c in columns + optional:
            picked[c].append(getattr(rows, c)[use])
        sources.append(rows)
        which.append(np.full(int(use.sum()), len(sources) - 1))
    if not sources:
        missing = [c for c in columns if not any(np.isfinite(getattr(r, c)).any() for r in rows_list)]
        names = ", ".join(os.path.basename(r.path) for r in rows_list)
        short = {"omega_rad_s": "rpm", "thrust_n": "thrust_n", "torque_nm": "torque_nm", "throttle": "throttle or esc_us"}
        if missing:
            notes = "".join(f" ({r.name}: {r.meta[k]})" for r in rows_list for k in ("thrust_note", "speed_note")
                            if r.meta.get(k))
            raise CalibrationError(
                f"{quantity}: {names} has no {' and no '.join(short[c] for c in missing)} column; this fit needs "
                + " and ".join(short[c] for c in columns)
                + (" (rotor speed: an optical RPM sensor or ESC telemetry)" if "omega_rad_s" in missing else "") + notes)
        raise CalibrationError(f"{quantity}: {names} has no row where the rotor spins with "
                               + " and ".join(columns) + " all measured")
    return [np.concatenate(picked[c]) for c in columns + optional], reasons, sources, np.concatenate(which)


def fit_square_law(rows_list: list[Rows], quantity: str = "thrust_n") -> Fit:
    """kf (quantity 'thrust_n') or km ('torque_nm') in Y = k w^2 per motor, with an optional
    linear term Y = k w^2 + k1 w reported (in `extra`) only when it earns its keep."""
    field_name, unit = {"thrust_n": ("kf_n_per_rad2s2", "N"), "torque_nm": ("km_nm_per_rad2s2", "N·m")}[quantity]
    (omega, y, rising), reasons, sources, which = _select(rows_list, ("omega_rad_s", quantity), field_name,
                                                          optional=("rising",))
    # The sim's model is k w^2 through the origin, so that is the fit. A log with idle rows was
    # tared from them (the offset is measured); a log without idle rows cannot measure its load
    # cell's offset, so the fit with a fitted offset is only reported beside it, never used.
    untared = [j for j, rows in enumerate(sources) if rows.tare["rows"] < 3]
    offsets = np.column_stack([(which == j).astype(float) for j in untared]) if untared else np.zeros((len(y), 0))
    w2 = omega[:, None] ** 2
    detect = np.hstack([np.ones_like(w2), omega[:, None], w2])
    quad = robust_lstsq(w2, y, lower=[0.0], detect=detect)
    extra = {}
    tared = {sources[j].name: {"offset_" + unit: sources[j].tare.get(quantity, 0.0), "idle_rows": sources[j].tare["rows"]}
             for j in range(len(sources)) if j not in untared}
    if tared:
        extra["tare_from_idle_rows"] = tared
    if untared:
        off = robust_lstsq(np.hstack([w2, offsets]), y, lower=[0.0] + [-np.inf] * len(untared), detect=detect)
        extra["fit_with_offset"] = {
            "model": f"{quantity} = k w^2 + offset per log (offset not measured: no idle rows; not used)",
            "k": off.coef[0], "k_ci95": off.ci95[0],
            "offset_" + unit: {sources[j].name: off.coef[1 + i] for i, j in enumerate(untared)},
            "rms_residual_" + unit: off.rms, "difference_pct": 100 * (off.coef[0] - quad.coef[0]) / quad.coef[0]}
        extra["fit_through_origin"] = {"k": quad.coef[0], "rms_residual_" + unit: quad.rms}
    reasons = {**reasons, "outlier": int((~quad.inliers).sum())}
    keep = quad.inliers
    lin = robust_lstsq(np.hstack([w2, omega[:, None]])[keep], y[keep])
    # earns its keep: clearly better by BIC and at least 10 % less RMS residual
    if _bic(lin, 2) < _bic(quad, 1) - 10 and lin.rms < 0.9 * quad.rms and lin.coef[0] > 0:
        extra["linear_term"] = {"model": f"{quantity} = k2 w^2 + k1 w", "k2": lin.coef[0], "k2_ci95": lin.ci95[0],
                                "k1": lin.coef[1], "k1_ci95": lin.ci95[1], "r2": lin.r2,
                                "rms_residual_" + unit: lin.rms, "rms_residual_without_" + unit: quad.rms}
    branches = [keep & (rising == r) for r in (1.0, 0.0)]
    if min(b.sum() for b in branches) >= 20:   # a sweep up and down: do both ways agree?
        k_up, k_down = (float(omega[b] ** 2 @ y[b] / np.sum(omega[b] ** 4)) for b in branches)
        extra["rising_vs_falling"] = {"k_rising": k_up, "k_falling": k_down,
                                      "difference_pct": 100 * (k_up - k_down) / quad.coef[0]}
    method = f"robust least squares {quantity} = k w^2 through the origin (the sim's model)"
    if tared:
        method += ", after taring the idle rows"
    if untared:
        method += (f"; {', '.join(sources[j].name for j in untared)} has no idle rows, so its load-cell offset is "
                   "not measured: taken as 0 (a fit with an offset is in extra.fit_with_offset)")
    method += f", {CLIP_SIGMA:g}-sigma clipping" + quad.ci_note()
    if "linear_term" in extra:
        method += "; a linear term k1 w fits clearly better (see extra), the sim's model has none"
    files = [rows.name for rows in sources]
    return Fit(field=field_name, value=float(quad.coef[0]), ci95=float(quad.ci95[0]), r2=quad.r2,
               rows_used=int(keep.sum()), rows_rejected=sum(reasons.values()), rejected=_nonzero(reasons),
               method=method, files=files, extra=extra,
               plot={"x": omega, "y": y, "used": keep, "x_label": "rotor speed [rad/s]",
                     "y_label": f"{quantity.split('_')[0]} per motor [{unit}]",
                     "model": lambda w, k=quad.coef[0]: k * w ** 2})


def _nonzero(reasons: dict) -> dict:
    return {k: v for k, v in sorted(reasons.items()) if v}


def fit_throttle_curve(rows_list: list[Rows], battery_v_nominal: float) -> tuple[Fit, Fit]:
    """The steady rotor speed at nominal voltage, w = c0 + c1 u + c2 u^2, and omega_max = w(u=1).

    Where the log has voltage, speeds are first scaled to the nominal voltage as the sim's model
    does (w proportional to V); the exponent a in w ~ V^a is fitted too and reported in `extra`
    (the sim assumes a = 1). Only spinning rows count: c0 >= 0 is where the fitted curve starts,
    not the ESC's start-up threshold."""
    (u, omega, volts), reasons, sources, _ = _select(rows_list, ("throttle", "omega_rad_s"), "throttle_to_omega_rad_s",
                                                     optional=("voltage_v",))
    files = [rows.name for rows in sources]
    v_frac = np.where(np.isfinite(volts), volts / battery_v_nominal, 1.0)
    A = np.column_stack([np.ones_like(u), u, u ** 2])
    y = omega / v_frac
    curve = robust_lstsq(A, y, lower=[0.0, 1e-9, -np.inf])
    note = ""
    if curve.coef[1] + 2 * curve.coef[2] <= 0:   # the sim needs a rising curve: fall back to a line
        line = robust_lstsq(A[:, :2], y, lower=[0.0, 1e-9])
        pad = np.zeros((3, 3))
        pad[:2, :2] = line.cov
        curve = LinearFit(np.r_[line.coef, 0.0], np.r_[line.ci95, 0.0], line.r2, line.inliers, line.rms, pad,
                          line.ci_widening)
        note = "; the quadratic fell towards full throttle, so a line (c2 = 0)"
    coef, keep = np.where(np.abs(curve.coef) < 1e-9 * np.abs(curve.coef).max(), 0.0, curve.coef), curve.inliers
    reasons = {**reasons, "outlier": int((~keep).sum())}
    extra = {"throttle_range": [float(u.min()), float(u.max())]}
    if np.ptp(v_frac[keep]) > 0.02:
        extra["voltage_exponent"] = _voltage_exponent(u[keep], omega[keep], v_frac[keep], coef)
    scaled = np.isfinite(volts).any()
    method = ("robust least squares w*(V_nom/V) = c0 + c1 u + c2 u^2" if scaled else
              "robust least squares w = c0 + c1 u + c2 u^2 (no voltage in the log)")
    method += f" over spinning rows, battery_v_nominal = {battery_v_nominal:g} V, c0 >= 0" + note + curve.ci_note()
    common = dict(r2=curve.r2, rows_used=int(keep.sum()), rows_rejected=sum(reasons.values()),
                  rejected=_nonzero(reasons), files=files)
    curve_fit = Fit(field="throttle_to_omega_rad_s", value=[float(c) for c in coef],
                    ci95=[float(c) for c in curve.ci95], method=method, extra=extra, **common,
                    plot={"x": u, "y": y, "used": keep, "x_label": "throttle [0..1]",
                          "y_label": "steady rotor speed at V_nom [rad/s]",
                          "model": lambda x, c=coef: c[0] + c[1] * x + c[2] * x ** 2})
    ones = np.ones(3)
    ci_top = float(stats.t.ppf(0.975, max(int(keep.sum()) - 3, 1)) * math.sqrt(max(ones @ curve.cov @ ones, 0.0)))
    top_method = "the fitted throttle curve at u = 1" + (
        "" if u.max() >= 0.98 else f" (extrapolated: the log reaches u = {u.max():.2f})")
    omega_max = Fit(field="omega_max_rad_s", value=float(coef.sum()), ci95=ci_top, method=top_method, **common)
    return curve_fit, omega_max


def _voltage_exponent(u, omega, v_frac, coef) -> dict:
    """w = (c0 + c1 u + c2 u^2) * v_frac^a: a with its 95 % CI (the sim's model has a = 1)."""
    def resid(x):
        return (x[0] + x[1] * u + x[2] * u ** 2) * v_frac ** x[3] - omega
    sol = optimize.least_squares(resid, np.r_[coef, 1.0], x_scale=np.r_[np.abs(coef) + 1.0, 1.0])
    dof = max(len(u) - 4, 1)
    cov = (2 * sol.cost / dof) * np.linalg.pinv(sol.jac.T @ sol.jac)
    return {"a": float(sol.x[3]), "ci95": float(stats.t.ppf(0.975, dof) * math.sqrt(max(cov[3, 3], 0.0))),
            "model": "w = (c0 + c1 u + c2 u^2) * (V/V_nom)^a; the sim uses a = 1"}
