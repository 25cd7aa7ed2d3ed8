"""The calibration report: a text summary and a PNG with data, fit and residuals per quantity.

matplotlib is imported only by `plot_report` (Agg backend), so the fitting path never needs it.
"""
from __future__ import annotations

import json
import os

import numpy as np

from calibration.calibrate import Calibration

#: field -> (label, unit) for the summary
LABELS = {
    "kf_n_per_rad2s2": ("thrust coefficient kf", "N/(rad/s)^2"),
    "km_nm_per_rad2s2": ("torque coefficient km", "N·m/(rad/s)^2"),
    "throttle_to_omega_rad_s": ("throttle curve [c0, c1, c2]", "rad/s"),
    "omega_max_rad_s": ("max rotor speed", "rad/s"),
    "motor_tau_up_s": ("time constant up", "s"),
    "motor_tau_down_s": ("time constant down", "s"),
    "motor_delay_s": ("pure delay", "s"),
    "inertia_kg_m2": ("inertia [x, y, z]", "kg m^2"),
    "drag_n_per_m_s": ("linear drag per body axis [x, y, z] (z kept)", "N/(m/s)"),
}


def _fmt(value, ci, short: bool = False) -> str:
    if isinstance(value, list):
        if short:
            return "[" + ", ".join(f"{v:.4g}" for v in value) + "]"
        return "[" + ", ".join(f"{v:.4g} ± {c:.2g}" for v, c in zip(value, ci)) + "]"
    return f"{value:.4g} ± {ci:.2g} ({100 * ci / abs(value):.2g} %)" if value else f"{value:.4g} ± {ci:.2g}"


def summary_text(cal: Calibration, profile_path: str | None = None) -> str:
    lines = [f"calibration of {', '.join(r.name for r in cal.rows)}"]
    for rows in cal.rows:
        _, counts = rows.faulty()
        faults = ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"
        kind = f"{len(rows.steps)} throttle steps" if rows.steps else "sweep"
        lines.append(f"  {rows.name}: {len(rows)} rows ({rows.meta.get('source_format', '?')}, {kind}), "
                     f"tare rows {rows.tare.get('rows', 0)}, faults: {faults}")
        used = rows.meta.get("columns_used")
        if used:
            lines.append("    columns used: " + ", ".join(f"{k} <- {v}" for k, v in used.items()))
        for key in ("speed_note", "sparse_columns", "skipped"):
            if rows.meta.get(key):
                lines.append(f"    {key.replace('_', ' ')}: {rows.meta[key]}")
    lines.append("")
    for name, f in cal.fits.items():
        label, unit = LABELS[name]
        lines.append(f"{name} = {_fmt(f.value, f.ci95)} {unit}   ({label}; 95 % CI)")
        rejected = ", ".join(f"{k} {v}" for k, v in f.rejected.items())
        lines.append(f"    R² {f.r2:.4f}, rows used {f.rows_used}, rejected {f.rows_rejected}"
                     + (f" ({rejected})" if rejected else ""))
        lines.append(f"    {f.method}")
        linear = f.extra.get("linear_term")
        if linear:
            lines.append(f"    linear term earns its keep: k2 = {linear['k2']:.4g}, k1 = {linear['k1']:.4g} "
                         f"(R² {linear['r2']:.4f}); the sim uses the k w^2 fit above")
        offset = f.extra.get("fit_with_offset")
        if offset:
            lines.append(f"    with a fitted load-cell offset (not used, no idle rows measure it): k = {offset['k']:.4g} "
                         f"({offset['difference_pct']:+.1f} %), offset "
                         + ", ".join(f"{v:.4g}" for v in next(v for k, v in offset.items() if k.startswith("offset_")).values()))
        branches = f.extra.get("rising_vs_falling")
        if branches and abs(branches["difference_pct"]) > 2:
            lines.append(f"    rising and falling throttle disagree by {branches['difference_pct']:+.1f} % "
                         "(hysteresis: a load cell lagging the rpm, or heating); the fit pools both")
        volt = f.extra.get("voltage_exponent")
        if volt:
            lines.append(f"    voltage exponent a = {volt['a']:.2f} ± {volt['ci95']:.2f} in w ~ V^a (the sim uses 1; "
                         "within one sweep the sag under load is confounded with throttle)")
    lines.append(f"battery_v_nominal = {cal.battery_v_nominal:g} V ({cal.battery_v_source})")
    for name, why in cal.not_fitted.items():
        lines.append(f"not fitted, kept from the base profile: {name}: {why}")
    if cal.hover:
        h = cal.hover
        lines.append(f"hover closure: sum kf w^2 = {h['predicted_thrust_n']:.4g} N vs weight {h['weight_n']:.4g} N "
                     f"({h['mass_kg']:g} kg) -> {h['closure']:.3f} ({h['error_pct']:+.1f} %) at hover rpm "
                     f"{', '.join(f'{r:.0f}' for r in h['hover_rpm'])}")
    for problem in cal.problems:
        lines.append(f"PROBLEM: {problem}")
    if profile_path:
        lines.append(f"profile written to {profile_path}")
    return "\n".join(lines)


def flight_summary_text(out: dict, profile_path: str | None = None) -> str:
    """The text summary of `calibration.flightid.calibrate_flight`."""
    ident = out["identification"]
    cal = out["profile"]["calibration"]
    lines = [f"flight identification from {', '.join(cal['files'])}: {ident.used_rows} flying rows in "
             f"{len(ident.stretches)} stretch(es)",
             "  rows left out: " + (", ".join(f"{k} {v}" for k, v in ident.skipped.items()) or "none")]
    for issue in out["trajectory_issues"]:
        lines.append(f"  log: {issue}")
    for name, f in ident.fits.items():
        label, unit = LABELS.get(name, (name, ""))
        lines.append(f"{name} = {_fmt(f.value, f.ci95)} {unit}   ({label}; 95 % CI), R² {f.r2:.4f}")
    for name, why in ident.not_fitted.items():
        lines.append(f"not fitted, kept from the base profile: {name}: {why}")
    if "com_offset_m" in ident.figures:
        x, y = ident.figures["com_offset_m"]
        lines.append(f"centre of mass offset x {x * 1e3:+.2f} mm, y {y * 1e3:+.2f} mm ({ident.figures['com_offset_note']})")
    discharge = ident.figures.get("battery_discharge")
    if discharge:
        lines.append(f"battery discharge: thrust per command falls {100 * discharge['per_hover_s']:.3f} "
                     f"± {100 * discharge['per_hover_s_ci95']:.3f} % per hover-second (used in the cross-validation, "
                     "not in the profile)")
    cv = out["cross_validation"]
    if cv:
        for key in ("train", "test", "base_on_test"):
            e = cv[key]
            plain = e.get("thrust_rmse_pct_of_hover_without_discharge")
            lines.append(f"{key.replace('_', ' ')} ({e['file']}): thrust RMSE {e['thrust_rmse_pct_of_hover']:.2f} % of hover "
                         + (f"(with the discharge; {plain:.2f} % without it; " if plain is not None else "(no discharge model; ")
                         + f"low-passed {e.get('thrust_rmse_pct_of_hover_lowpass_40hz', float('nan')):.2f} %), "
                         f"bias {e['thrust_bias_pct_of_hover']:+.2f} %, R² {e['thrust_r2']:.3f}")
    for problem in out["problems"]:
        lines.append(f"PROBLEM: {problem}")
    if profile_path:
        lines.append(f"profile written to {profile_path}")
    return "\n".join(lines)


def write_report(cal: Calibration, out_dir: str, profile_path: str | None = None) -> list[str]:
    """summary.txt, calibration.json (the --json figures) and calibration.png in out_dir."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, n) for n in ("summary.txt", "calibration.json", "calibration.png")]
    with open(paths[0], "w", encoding="utf-8") as f:
        f.write(summary_text(cal, profile_path) + "\n")
    with open(paths[1], "w", encoding="utf-8") as f:
        json.dump(cal.summary(), f, indent=2)
    plot_report(cal, paths[2])
    return paths


def plot_report(cal: Calibration, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [f for n, f in cal.fits.items() if f.plot.get("x") is not None]
    steps = [f for n, f in cal.fits.items() if f.plot.get("steps")]
    n_rows = max(len(panels) + len(steps), 1)
    fig, axes = plt.subplots(n_rows, 2, figsize=(12, 3.6 * n_rows), squeeze=False)
    for (ax_fit, ax_res), f in zip(axes, panels):
        x, y, used = f.plot["x"], f.plot["y"], f.plot["used"]
        grid = np.linspace(0, x.max() * 1.02, 200)
        ax_fit.plot(x[used], y[used], ".", ms=3, alpha=0.5, label=f"data ({used.sum()} rows)")
        if (~used).any():
            ax_fit.plot(x[~used], y[~used], "rx", ms=5, label=f"rejected as outlier ({(~used).sum()})")
        ax_fit.plot(grid, f.plot["model"](grid), "k-", lw=1.5, label="fit")
        linear = f.extra.get("linear_term")
        if linear:
            ax_fit.plot(grid, linear["k2"] * grid ** 2 + linear["k1"] * grid, "k--", lw=1,
                        label=f"with a linear term (R² {linear['r2']:.4f})")
        ax_fit.set(xlabel=f.plot["x_label"], ylabel=f.plot["y_label"],
                   title=f"{f.field} = {_fmt(f.value, f.ci95, short=True)}, R² {f.r2:.4f}")
        ax_fit.legend(fontsize=8)
        ax_res.plot(x[used], (y - f.plot["model"](x))[used], ".", ms=3, alpha=0.5)
        ax_res.axhline(0, color="k", lw=1)
        ax_res.set(xlabel=f.plot["x_label"], ylabel="residual", title=f"{f.field}: residuals")
    for (ax_fit, ax_res), f in zip(axes[len(panels):], steps):
        for s in f.plot["steps"]:
            scale = s["y1"] - s["y0"]
            line, = ax_fit.plot(s["t"] * 1e3, (s["y"] - s["y0"]) / scale, ".", ms=2, alpha=0.4)
            ax_fit.plot(s["t"] * 1e3, (s["fit"] - s["y0"]) / scale, "-", color=line.get_color(), lw=1)
            ax_res.plot(s["t"] * 1e3, (s["y"] - s["fit"]) / abs(scale), ".", ms=2, alpha=0.4, color=line.get_color())
        ax_fit.set(xlabel="time since the throttle step [ms]", ylabel="normalised response",
                   title=f"{f.field} = {_fmt(f.value, f.ci95)} ({len(f.plot['steps'])} steps), R² {f.r2:.4f}")
        ax_res.axhline(0, color="k", lw=1)
        ax_res.set(xlabel="time since the throttle step [ms]", ylabel="residual / step size",
                   title=f"{f.field}: residuals")
    if not panels and not steps:
        axes[0, 0].text(0.5, 0.5, "nothing to plot", ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
