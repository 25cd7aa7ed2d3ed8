"""Stand logs + a base drone profile -> a calibrated drone profile, with every fit's provenance.

    cal = calibrate(["sweep.csv", "steps.csv"], load_profile("fpv5"))
    cal.profile            # the profile's JSON object, valid for sim.profiles.parse_profile
    cal.fits["kf_n_per_rad2s2"].value, .ci95, .r2, .rows_used, .rows_rejected
    cal.not_fitted         # field -> why it kept the base profile's value

Every log feeds the steady fits (kf, km, throttle curve; a step test's transients are left out);
logs with held throttle steps also feed the time constants and the delay. Quantities the data
cannot give keep the base profile's value and say why; no fit at all is an error.
"""
from __future__ import annotations

import datetime as _dt
import logging
import math
import re
from dataclasses import dataclass, field

import numpy as np

from sim.profiles import Profile, ProfileError, parse_profile

from calibration.data import ESC_RANGE_US, G_M_S2, MIN_STEP, CalibrationError, Rows, load_log, screen_log
from calibration.fit import rounded, fit_square_law, fit_throttle_curve
from calibration.steps import fit_steps

log = logging.getLogger(__name__)

LIPO_CELL_V = 3.7        # nominal LiPo cell voltage
LIPO_CELL_FULL_V = 4.2   # a full cell


@dataclass
class Calibration:
    fits: dict                       # profile field -> Fit
    profile: dict                    # the calibrated profile's JSON object
    not_fitted: dict                 # profile field -> why it kept the base value
    rows: list                       # the screened logs (Rows)
    battery_v_nominal: float
    battery_v_source: str
    problems: list = field(default_factory=list)   # why the profile would not run in the sim (then it is not written)
    hover: dict | None = None        # hover_closure(...) when hover speeds were given

    def summary(self) -> dict:
        """The figures as one JSON-able object (what `skyloop calibrate --json` prints)."""
        fits = self.fits
        out = {name: rounded(f.value) for name, f in fits.items()}
        if "battery_v_nominal" not in out:
            out["battery_v_nominal"] = self.battery_v_nominal
        out.update({
            "r2_thrust": rounded(fits["kf_n_per_rad2s2"].r2) if "kf_n_per_rad2s2" in fits else None,
            "r2_torque": rounded(fits["km_nm_per_rad2s2"].r2) if "km_nm_per_rad2s2" in fits else None,
            "r2_throttle_curve": rounded(fits["throttle_to_omega_rad_s"].r2) if "throttle_to_omega_rad_s" in fits else None,
            "r2_steps": rounded(next((f.r2 for n, f in fits.items() if n.startswith("motor_")), None)),
            "ci95": {n: rounded(f.ci95) for n, f in fits.items()},
            "rows_used": {n: f.rows_used for n, f in fits.items()},
            "rows_rejected": {n: f.rows_rejected for n, f in fits.items()},
            "rejected_by_reason": {n: f.rejected for n, f in fits.items()},
            "extra": {n: rounded(f.extra) for n, f in fits.items() if f.extra and n != "motor_delay_s"},
            "not_fitted": self.not_fitted,
            "files": [r.path for r in self.rows],
            "hover_closure": rounded(self.hover) if self.hover else None,
        })
        return out


def choose_battery_v_nominal(rows_list: list[Rows], base: Profile, given: float | None) -> tuple[float, str]:
    """The voltage the throttle curve is normalised to, and where it came from: the command line,
    the logs' sidecar ('battery_v_nominal'), the base profile when the logs' voltages agree with it,
    else a LiPo cell count guessed from the highest voltage in the logs."""
    if given is not None:
        return float(given), "given on the command line (--battery-v-nominal)"
    for rows in rows_list:
        v = rows.meta.get("battery_v_nominal")
        if isinstance(v, (int, float)) and v > 0:
            return float(v), f"sidecar of {rows.name}"
    volts = np.concatenate([r.voltage_v[np.isfinite(r.voltage_v)] for r in rows_list])
    base_v = float(base.params["battery_v_nominal"])
    if len(volts) == 0 or 0.75 <= np.median(volts) / base_v <= 1.2:
        return base_v, f"base profile {base.name}"
    cells = max(1, int(math.ceil(np.max(volts) / LIPO_CELL_FULL_V - 0.05)))
    v = cells * LIPO_CELL_V
    log.warning("the logs' voltages (median %.2f V) do not fit the base profile's battery (%.2f V): "
                "assuming a %dS LiPo, %.1f V nominal (set --battery-v-nominal to override)",
                np.median(volts), base_v, cells, v)
    return v, f"{cells}S LiPo guessed from the logs' highest voltage {np.max(volts):.2f} V"


def _try(fits: dict, not_fitted: dict, names: tuple, fit_function, *args) -> None:
    try:
        result = fit_function(*args)
    except CalibrationError as exc:
        why = str(exc)
        for name in names:
            not_fitted[name] = why[len(names[0]) + 2:] if why.startswith(names[0] + ": ") else why
        return
    for f in result if isinstance(result, (list, tuple)) else [result]:
        fits[f.field] = f


def calibrate(paths: list[str], base: Profile, *, name: str | None = None, mass_kg: float | None = None,
              battery_v_nominal: float | None = None, esc_range_us=ESC_RANGE_US, min_step: float = MIN_STEP,
              rpm_columns: tuple[str, ...] | None = None) -> Calibration:
    if not paths:
        raise CalibrationError("no stand logs given")
    rows_list = [screen_log(load_log(p, rpm_columns), esc_range_us, min_step) for p in paths]
    for rows in rows_list:
        procedure = str(rows.meta.get("procedure", ""))
        if "step" in procedure.lower() and not rows.steps:
            fit_steps([rows], min_step)    # raises the clear 'no throttle steps' error
    v_nom, v_source = choose_battery_v_nominal(rows_list, base, battery_v_nominal)

    fits, not_fitted = {}, {}
    _try(fits, not_fitted, ("kf_n_per_rad2s2",), fit_square_law, rows_list, "thrust_n")
    _try(fits, not_fitted, ("km_nm_per_rad2s2",), fit_square_law, rows_list, "torque_nm")
    _try(fits, not_fitted, ("throttle_to_omega_rad_s", "omega_max_rad_s"), fit_throttle_curve, rows_list, v_nom)
    step_logs = [r for r in rows_list if r.steps]
    dynamics = ("motor_tau_up_s", "motor_tau_down_s", "motor_delay_s")
    if step_logs:
        _try(fits, not_fitted, dynamics, fit_steps, step_logs, min_step)
        for name_ in dynamics:
            if name_ not in fits and name_ not in not_fitted:
                not_fitted[name_] = f"no usable step in that direction in {', '.join(r.name for r in step_logs)}"
    else:
        for name_ in dynamics:
            not_fitted[name_] = (f"no log with held throttle steps (>= {min_step:g}) and time stamps; "
                                 "record one with `skyloop stand run steps`")
    if not fits:
        by_reason = {}
        for field_name, why in not_fitted.items():
            by_reason.setdefault(why, []).append(field_name)
        reasons = "; ".join(f"{', '.join(names)}: {why}" for why, names in by_reason.items())
        raise CalibrationError(f"nothing could be fitted from {', '.join(paths)}: {reasons}")
    for name_, why in not_fitted.items():
        log.warning("%s not fitted, kept from the base profile: %s", name_, why)

    profile = build_profile(base, fits, name=name, mass_kg=mass_kg, battery_v=(v_nom, v_source),
                            files=[r.name for r in rows_list], not_fitted=not_fitted)
    problems = profile_problems(profile) + unit_problems(fits, rows_list, profile["params"])
    return Calibration(fits=fits, profile=profile, not_fitted=not_fitted, rows=rows_list,
                       battery_v_nominal=v_nom, battery_v_source=v_source, problems=problems)


#: unit slips seen in stand logs: (what the log may hold, factor that makes it newtons)
THRUST_UNIT_SLIPS = (("grams-force (gf)", G_M_S2 * 1e-3), ("kilograms-force (kgf)", G_M_S2),
                     ("ounces-force (ozf)", 0.27801385), ("pounds-force (lbf)", 4.4482216))
MAX_THRUST_TO_WEIGHT = 25.0        # the fastest racing quads reach about 15
MAX_THRUST_PER_POWER_GF_W = 30.0   # real props: about 1 to 15 gf per electrical watt
TORQUE_TO_THRUST_M = (0.002, 0.1)  # km / kf: a length near a tenth of the prop radius


def _slip_hint(ratio: float, lo: float, hi: float) -> str:
    """Which unit slip would bring `ratio` (a thrust-proportional figure) into [lo, hi]."""
    for unit, factor in THRUST_UNIT_SLIPS:
        if lo <= ratio * factor <= hi:
            return f"; is the thrust column in {unit} rather than newtons? (x{factor:.4g} would fit)"
    return ""


def unit_problems(fits: dict, rows_list: list[Rows], params: dict) -> list[str]:
    """Plausibility checks that catch a thrust or torque logged in the wrong unit (grams as newtons
    gives kf 102x too large): thrust-to-weight with the profile's mass, thrust per electrical
    watt where the log has power, and the torque-to-thrust ratio km / kf."""
    problems = []
    kf = fits.get("kf_n_per_rad2s2")
    if kf is None:
        return problems
    weight = params["mass_kg"] * G_M_S2
    t_w = 4 * kf.value * params["omega_max_rad_s"] ** 2 / weight
    if t_w > MAX_THRUST_TO_WEIGHT:
        problems.append(f"thrust-to-weight {t_w:.3g} with kf = {kf.value:.4g} N/(rad/s)^2, omega_max = "
                        f"{params['omega_max_rad_s']:.4g} rad/s and mass {params['mass_kg']:g} kg is not plausible "
                        f"(real drones: under {MAX_THRUST_TO_WEIGHT:g})"
                        + _slip_hint(t_w, 1.2, MAX_THRUST_TO_WEIGHT) + "; or give --mass-kg")
    per_watt = []
    for rows in rows_list:
        if rows.current_a is None:
            continue
        power = rows.voltage_v * rows.current_a
        ok = np.isfinite(power) & np.isfinite(rows.thrust_n) & (power > 0.05 * np.nanmax(power, initial=0)) & (rows.omega_rad_s > 0)
        if ok.sum() >= 3:
            per_watt.append(float(np.median(rows.thrust_n[ok] / power[ok])) / (G_M_S2 * 1e-3))
    if per_watt and max(per_watt) > MAX_THRUST_PER_POWER_GF_W:
        problems.append(f"the logs give {max(per_watt):.3g} gf of thrust per electrical watt (median over spinning rows); "
                        f"real props give under {MAX_THRUST_PER_POWER_GF_W:g}"
                        + _slip_hint(max(per_watt), 0.5, MAX_THRUST_PER_POWER_GF_W))
    km = fits.get("km_nm_per_rad2s2")
    if km is not None and km.value > 0:
        ratio = km.value / kf.value
        lo, hi = TORQUE_TO_THRUST_M
        if not lo <= ratio <= hi:
            problems.append(f"km / kf = {ratio:.3g} m is not plausible for a propeller (expected {lo:g}..{hi:g} m): "
                            "thrust or torque is in the wrong unit" + _slip_hint(1.0 / ratio, 1.0 / hi, 1.0 / lo))
    return problems


def build_profile(base: Profile, fits: dict, *, name: str | None, mass_kg: float | None,
                  battery_v: tuple[float, str], files: list[str], not_fitted: dict | None = None) -> dict:
    """The base profile with the fitted numbers and their `source` objects (check it: profile_problems)."""
    data = base.to_json()
    params, source = dict(data["params"]), dict(data["source"])
    for field_name, f in fits.items():
        params[field_name] = rounded(f.value, 7)
        source[field_name] = f.source()
    for field_name, why in (not_fitted or {}).items():
        before = source.get(field_name)
        if isinstance(before, dict):    # the base measured it: its provenance stays, with why not here
            source[field_name] = {**before, "kept_by": f"{base.name} -> this profile (not measured here: {why})"}
            continue
        before = str(before or "")
        source[field_name] = f"kept from the base profile {base.name} (not measured: {why})" + (
            f"; there: {before}" if before else "")
    v_nom, v_source = battery_v
    if v_source != f"base profile {base.name}":
        params["battery_v_nominal"] = rounded(v_nom)
        source["battery_v_nominal"] = v_source
    if mass_kg is not None:
        params["mass_kg"] = float(mass_kg)
        source["mass_kg"] = "given on the command line (--mass-kg)"
    described = re.sub(r" ?Motor constants calibrated by `skyloop calibrate` .*$", "", data.get("description", ""))
    data["calibration"] = {"measured": sorted(fits), "kept_from_base": dict(sorted((not_fitted or {}).items())),
                           "base_profile": base.name, "files": list(files)}
    data.update(name=name or f"{base.name}_calibrated", params=params, source=source,
                description=(described + f" Motor constants calibrated by `skyloop calibrate` from {', '.join(files)} "
                             f"on {_dt.date.today().isoformat()}.").strip())
    return data


def profile_problems(data: dict) -> list[str]:
    """Why a profile would not load (sim.profiles) or not run (what the C core checks when it makes
    an env from it); empty when it is fine."""
    try:
        parse_profile(data, "calibrated profile")
    except ProfileError as exc:
        return exc.problems
    params = data["params"]
    problems = []
    c = params["throttle_to_omega_rad_s"]
    if not (c[1] > 0 and c[1] + 2 * c[2] > 0 and c[0] >= 0 and sum(c) > 0):
        problems.append(f"throttle_to_omega_rad_s = {c} does not rise from c0 >= 0 over throttle 0..1")
    thrust_max = 4 * params["kf_n_per_rad2s2"] * params["omega_max_rad_s"] ** 2
    weight = params["mass_kg"] * G_M_S2
    if weight >= 0.95 * thrust_max:
        problems.append(f"the drone cannot hover: 4 kf omega_max^2 = {thrust_max:.4g} N against a weight of "
                        f"{weight:.4g} N; is the base profile ({params['mass_kg']} kg) the drone these motors fly? "
                        "(--mass-kg sets the mass)")
    return problems
