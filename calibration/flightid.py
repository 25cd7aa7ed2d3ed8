"""Identification from a flight log with IMU and motor commands (no rotor speeds, no position),
in the spirit of sysid.tools (Eschmann et al. 2024): the thrust curve, the motor lag and delay,
the inertia and the yaw torque coefficient, and (with velocity and attitude logged) the linear
rotor drag in body x and y, from the flight itself.

    ident = identify_flight(read_flight_log("log10.csv", "crazyflie_sysid"), load_profile("crazyflie21"))
    ident.fits                 # profile field -> calibration.fit.Fit (value, ci95, r2, rows, method)
    ident.not_fitted           # field -> why it keeps the base profile's value
    ident.skipped              # stretch name -> rows left out (motors off, grounded, take-off, crash ...)
    evaluate_flight(traj, profile)   # the same model's errors on another flight (cross-validation)

The model is the sim's (sim/drone.h), run through the sim's own motor model
(`sim.core.motor_response`: throttle curve, delay, up / down lag):

    w_i(t)   = lag_{tau_up, tau_down}( c0 + c1 u_i(t - d) + c2 u_i(t - d)^2 )
    f_z      = kf sum_i w_i^2 / m                       (the accelerometer's body z: specific force)
    J_x dw_x/dt = l sum_i MY_i kf w_i^2 - y_c sum_i kf w_i^2     (l = arm / sqrt 2, y_c: CoM offset)
    J_y dw_y/dt = -l sum_i MX_i kf w_i^2 + x_c sum_i kf w_i^2
    J_z dw_z/dt = -km sum_i SPIN_i w_i^2 + b_z

What one flight cannot separate is said, not guessed: without rotor speeds only kf w(u)^2 is
seen, so kf stays the base profile's (a stand measures it) and the throttle curve is fitted to it
(a log with rotor speeds gives kf itself: m f_z = kf sum w_i^2);
yaw gives km / J_z only, so J_z is scaled from the fitted J_x, J_y by the base profile's
J_z / (J_x + J_y) (the frame's shape) and km follows. The time constants up and down and the
delay are fitted jointly; each figure has a 95 % CI, with the residuals' row-to-row correlation
counted (1 kHz rows are far from independent).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, stats
from scipy.signal import savgol_filter

from calibration.data import G_M_S2, CalibrationError
from calibration.fit import Fit, robust_lstsq, rounded
from calibration.flightlogs import Trajectory
from sim.core import motor_response
from sim.profiles import Profile

log = logging.getLogger(__name__)

#: the sim's quad-X geometry (sim/drone.h SL_MX, SL_MY, SL_SPIN; sim order: front-right,
#: back-left, front-left, back-right); tests/test_flightid.py checks it against the sim itself
MOTOR_MX = np.array([+1.0, -1.0, +1.0, -1.0])
MOTOR_MY = np.array([-1.0, +1.0, +1.0, -1.0])
MOTOR_SPIN = np.array([+1.0, +1.0, -1.0, -1.0])

FLYING_FRACTION = 0.6   # a row flies when the mean command is at least this share of the flight's median
TRIM_S = 1.0            # left out after every take-off and before every landing (ground contact)
MERGE_S = 0.5           # motors cut in the air for less than this: still the same flight
RECOVER_S = 0.2         # left out after an in-flight motor cut (the sim's model has no stopped motor)
MAX_RATE_RAD_S = 15.0   # faster than this the drone is tumbling (a crash), not flying the model
DELAY_GRID_S = np.arange(0.0, 0.081, 0.002)
SMOOTH_S = 0.021        # the Savitzky-Golay window for differentiating the gyro
MAX_REL_CI = 0.5        # a figure whose 95 % CI is wider than this share of it is not used
MIN_COMMAND_SPAN = 0.25  # a throttle curve needs commands spread over at least this much of 0..1
MAX_DELAY_CI_S = 0.01   # ... except a delay known to within this (a small delay has a wide relative CI)
MIN_DRAG_SPEED_STD_M_S = 0.2   # a drag fit needs the body velocity to vary at least this much per axis


@dataclass
class FlightIdentification:
    fits: dict
    not_fitted: dict
    skipped: dict
    used_rows: int
    stretches: list
    figures: dict = field(default_factory=dict)


def _effective_n(resid: np.ndarray) -> float:
    """Rows worth of independent information: n / (1 + 2 sum_k rho_k), the autocorrelations rho_k
    of the residuals summed until they first drop below 0.05 (1 kHz rows are far from independent)."""
    n = len(resid)
    if n < 10:
        return float(n)
    r = resid - resid.mean()
    spec = np.fft.rfft(r, 2 * n)
    acf = np.fft.irfft(spec * np.conj(spec))[:n]
    acf = acf / acf[0] if acf[0] > 0 else acf
    small = np.flatnonzero(acf[1:] < 0.05)
    k_end = int(small[0]) + 1 if len(small) else n
    tau = 1.0 + 2.0 * float(np.sum(acf[1:k_end]))
    return n / max(tau, 1.0)


def flying_rows(traj: Trajectory) -> tuple[np.ndarray, dict, list]:
    """Rows where the drone flies the model, the rows left out by reason, and the flying stretches
    [(t0, t1)]. Left out: motors off or commands missing, IMU missing, low thrust (on the ground,
    taking off or landing), the first and last TRIM_S of each flight (ground contact), a crash
    (body rate above MAX_RATE_RAD_S or upside down: the flight ends TRIM_S before it), and in the
    air, a motor cut (a command of 0: the sim's throttle curve does not model a stopped motor) and
    the RECOVER_S after it."""
    u = traj.motor_throttle
    t = traj.t_s
    imu_ok = np.all(np.isfinite(traj.accel_flu_m_s2), axis=1) & np.all(np.isfinite(traj.omega_flu_rad_s), axis=1)
    cmd_ok = np.all(np.isfinite(u), axis=1) & np.all(u > 0, axis=1)
    active = cmd_ok & imu_ok
    if active.sum() < 100:
        raise CalibrationError(f"{traj.source}: {int(active.sum())} rows with all four motors commanded and the IMU "
                               "logged; a flight identification needs a flight")
    mean_u = np.nanmean(np.nan_to_num(u), axis=1)
    hover_u = float(np.median(mean_u[active]))
    flying = active & (mean_u >= FLYING_FRACTION * hover_u)
    crash = (np.max(np.abs(np.nan_to_num(traj.omega_flu_rad_s)), axis=1) > MAX_RATE_RAD_S) | (
        np.nan_to_num(traj.accel_flu_m_s2[:, 2], nan=G_M_S2) < 0)
    # flights: runs of flying rows in one segment, merged across dips shorter than MERGE_S
    runs = []
    edges = np.flatnonzero(np.diff(np.r_[0, flying.astype(int), 0]) != 0)
    for a, b in zip(edges[0::2], edges[1::2]):
        if runs and traj.segment[a] == traj.segment[runs[-1][1] - 1] and t[a] - t[runs[-1][1] - 1] < MERGE_S:
            runs[-1][1] = b
        else:
            runs.append([a, b])
    reason = np.full(traj.n, "", dtype=object)
    reason[~cmd_ok] = "motors_off_or_no_command"
    reason[cmd_ok & ~imu_ok] = "imu_missing"
    reason[active & ~flying] = "low_thrust_grounded"
    in_flight = np.zeros(traj.n, dtype=bool)
    stretches = []
    for a, b in runs:
        hit = np.flatnonzero(crash[a:b])
        end_t = (t[a + hit[0]] if len(hit) else t[b - 1]) - TRIM_S
        if len(hit):
            reason[a + hit[0]:b] = "crash_or_tumble"
        inside = np.arange(a, b)
        trim = ((t[a:b] < t[a] + TRIM_S) | (t[a:b] > end_t)) & (reason[a:b] == "")
        reason[inside[trim]] = "take_off_and_landing_trim"
        cut = ~flying[a:b] & (t[a:b] >= t[a] + TRIM_S) & (t[a:b] <= end_t)
        last_cut = -np.inf
        for k in range(a, b):
            if cut[k - a]:
                last_cut = t[k]
                reason[k] = "in_flight_motor_cut"
            elif t[k] - last_cut < RECOVER_S and reason[k] == "":
                reason[k] = "recovery_after_motor_cut"
        in_flight[a:b] = True
        kept = inside[reason[a:b] == ""]
        if len(kept):
            stretches.append((float(t[kept[0]]), float(t[kept[-1]])))
    use = in_flight & (reason == "") & flying
    reason[~in_flight & (reason == "")] = "outside_the_flight"
    names, counts = np.unique(reason[~use], return_counts=True)
    return use, {str(k): int(v) for k, v in zip(names, counts) if k}, stretches


def _runs(traj: Trajectory):
    """(start, end) of each gap-free segment."""
    seg = traj.segment
    cuts = np.flatnonzero(np.diff(seg)) + 1
    return list(zip(np.r_[0, cuts], np.r_[cuts, traj.n]))


def rotor_model(traj: Trajectory, params: dict) -> np.ndarray:
    """The sim's motor model driven by the logged commands: rotor speed [n, 4], per gap-free segment
    (each starts as if its first command had been held)."""
    p = dict(params)
    p["omega_max_rad_s"] = 1e4        # the cap is what the fitted curve gives at u = 1, set afterwards
    u = np.nan_to_num(np.clip(traj.motor_throttle, 0.0, 1.0))
    out = np.full((traj.n, 4), np.nan)
    for a, b in _runs(traj):
        if b - a < 2:
            continue
        dt = float(np.median(np.diff(traj.t_s[a:b])))
        c = p["throttle_to_omega_rad_s"]
        for m in range(4):
            w0 = max(c[0] + c[1] * u[a, m] + c[2] * u[a, m] ** 2, 0.0)
            out[a:b, m] = motor_response(p, u[a:b, m], dt, 1.0, w0)
    return out


def _fit_thrust(traj: Trajectory, base: dict, mass_kg: float, use: np.ndarray, fit_curve: bool = True):
    """Throttle curve (unless `fit_curve` is False: the base's is kept), tau up / down and delay from
    the accelerometer's z: the best delay on a grid, the rest by least squares at each.
    Returns ({'one_tau' | 'two_tau': (x = [c0, c1, c2, tau_up(, tau_down)], cov)}, delay, resid,
    ssr by delay, effective rows)."""
    kf = base["kf_n_per_rad2s2"]
    fz = traj.accel_flu_m_s2[use, 2]
    params = dict(base)

    def resid(x, delay):   # x: c0, c1, c1 + 2 c2, tau (one for both ways) or ..., tau_up, tau_down
        params.update(throttle_to_omega_rad_s=curve(x), motor_tau_up_s=x[3], motor_tau_down_s=x[-1],
                      motor_delay_s=delay)
        w = rotor_model(traj, params)[use]
        return kf * np.sum(w ** 2, axis=1) / mass_kg - fz

    # start: the base curve scaled so that it hovers at the flight's median command
    c = np.asarray(base["throttle_to_omega_rad_s"], float)
    u_h = float(np.median(traj.motor_throttle[use]))
    w_hover = math.sqrt(float(np.median(fz)) * mass_kg / (4 * kf))
    if fit_curve:
        c = c * w_hover / (c[0] + c[1] * u_h + c[2] * u_h ** 2)
    # the curve as c0, its slope at u = 0 and at u = 1, all >= 0: it rises over 0..1, as the sim needs
    x0 = np.r_[c[0], max(c[1], 1.0), max(c[1] + 2 * c[2], 1.0), 0.5 * (base["motor_tau_up_s"] + base["motor_tau_down_s"])]
    lo = [0.0, 0.0, 0.0, 2e-3]
    hi = [5e4, 5e4, 5e4, 0.5]
    x0 = np.clip(x0, np.add(lo, 1e-6), np.subtract(hi, 1e-6))
    scale = np.r_[np.abs(c) + 100.0, 0.02]
    n_fixed = 0 if fit_curve else 3      # leading parameters held at x0
    fixed = x0[:n_fixed]

    def solve(start, delay, extra_tau=False, nfev=25):
        lo_, hi_, sc = lo + [2e-3] * extra_tau, hi + [0.5] * extra_tau, np.r_[scale, [0.02] * extra_tau]
        sol = optimize.least_squares(lambda xf: resid(np.r_[fixed, xf], delay), start[n_fixed:],
                                     bounds=(lo_[n_fixed:], hi_[n_fixed:]), x_scale=sc[n_fixed:], max_nfev=nfev,
                                     diff_step=1e-3)
        sol.x = np.r_[fixed, sol.x]
        jac = np.zeros((len(sol.fun), len(sol.x)))
        jac[:, n_fixed:] = sol.jac
        sol.jac = jac
        return sol
    by_delay, fitted = {}, {}

    def at(delay):
        delay = round(float(delay), 4)
        if delay not in by_delay:
            start = fitted[min(fitted, key=lambda d: abs(d - delay))].x if fitted else x0
            sol = solve(start, delay)
            by_delay[delay], fitted[delay] = float(2 * sol.cost), sol
        return by_delay[delay]

    coarse = DELAY_GRID_S[::5]                       # 10 ms apart, then 2 ms around the best
    best = min(coarse, key=at)
    for d in DELAY_GRID_S[np.abs(DELAY_GRID_S - best) < 0.0065]:
        at(d)
    delay = min(by_delay, key=by_delay.get)
    one = fitted[delay]
    both = solve(np.r_[one.x, one.x[3]], delay, extra_tau=True, nfev=40)
    n_eff = _effective_n(one.fun)

    def cov(sol):
        r = sol.fun
        return float(r @ r) / len(r) * np.linalg.pinv(sol.jac.T @ sol.jac) * len(r) / max(n_eff, 1.0)
    # back from (c0, slope at 0, slope at 1) to (c0, c1, c2): a linear map J, cov -> J cov J^T
    J = np.eye(5)
    J[2, 1:3] = [-0.5, 0.5]

    def back(x, c):
        k = len(x)
        return np.r_[curve(x), x[3:]], J[:k, :k] @ c @ J[:k, :k].T
    return ({"one_tau": back(one.x, cov(one)), "two_tau": back(both.x, cov(both))}, delay, one.fun, by_delay,
            n_eff)


def curve(x) -> list:
    """(c0, slope at u = 0, slope at u = 1) -> the throttle curve [c0, c1, c2]."""
    return [float(x[0]), float(x[1]), float(0.5 * (x[2] - x[1]))]


def _delay_ci(by_delay: dict, n_eff: float, n: int) -> float:
    """Half-width of the delays whose SSR is within the 95 % likelihood-ratio bound of the best."""
    delays = np.array(sorted(by_delay))
    ssr = np.array([by_delay[d] for d in delays])
    best = ssr.min()
    within = delays[ssr <= best * (1 + stats.chi2.ppf(0.95, 1) / max(n_eff, 1.0))]
    step = float(np.median(np.diff(delays))) if len(delays) > 1 else 0.0
    return float(max((within.max() - within.min()) / 2, step / 2))


def _angular(traj: Trajectory, params: dict, use: np.ndarray, mass_kg: float):
    """Rows used, measured angular acceleration [n, 3] and the model's per-row torque features."""
    kf = params["kf_n_per_rad2s2"]
    w = rotor_model(traj, params)
    thrust = kf * w ** 2
    l = params["arm_m"] / math.sqrt(2.0)
    feats = {"tau_x": l * thrust @ MOTOR_MY, "tau_y": -l * thrust @ MOTOR_MX, "yaw": -(w ** 2) @ MOTOR_SPIN,
             "total": thrust.sum(axis=1)}
    dw = np.full((traj.n, 3), np.nan)
    smooth = {k: np.full(traj.n, np.nan) for k in feats}
    for a, b in _runs(traj):
        dt = float(np.median(np.diff(traj.t_s[a:b]))) if b - a > 1 else 0.0
        window = max(5, int(round(SMOOTH_S / dt)) | 1) if dt > 0 else 0
        if b - a <= window or not dt > 0:
            continue
        g = np.nan_to_num(traj.omega_flu_rad_s[a:b])
        dw[a:b] = savgol_filter(g, window, 2, deriv=1, delta=dt, axis=0)
        for k, v in feats.items():          # the same filter on the model, so that both lag alike
            smooth[k][a:b] = savgol_filter(np.nan_to_num(v[a:b]), window, 2, axis=0)
    ok = use & np.all(np.isfinite(dw), axis=1) & np.isfinite(smooth["total"])
    return ok, dw, smooth


def _linfit(X: np.ndarray, y: np.ndarray):
    """Least squares y ~ X coef: (coef, 95 % CI with correlated residuals counted, R^2)."""
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    r = y - X @ coef
    n_eff = max(_effective_n(r), 1.0)
    dof = max(n_eff - X.shape[1], 1.0)
    # residual variance from all rows, information from n_eff of them
    cov = float(r @ r) / len(r) * np.linalg.pinv(X.T @ X) * len(r) / n_eff
    ci = stats.t.ppf(0.975, dof) * np.sqrt(np.clip(np.diag(cov), 0, None))
    sst = float(np.sum((y - y.mean()) ** 2))
    return coef, ci, (1 - float(r @ r) / sst if sst > 0 else math.nan)


def _fit_drag(traj: Trajectory, base: Profile, mass_kg: float, use: np.ndarray, rejected: dict, files: list):
    """Linear rotor drag in body x and y from a log with velocity and attitude: the thrust is along body z
    only, so the accelerometer's body x / y is the drag, f_xy = -(d_xy / m) v_b,xy + b (b: the
    accelerometer's offset and tilt misalignment). Body z keeps the base's (thrust and drag mix there).
    Returns (Fit or None, why not)."""
    if not traj.has("vel_enu_m_s") or not traj.has("quat_wxyz"):
        return None, "the log has no velocity and attitude (the drag needs the body velocity)"
    v_world = np.nan_to_num(traj.vel_enu_m_s)
    q = np.nan_to_num(traj.quat_wxyz)
    # world -> body: v_b = R^T v, R from the unit quaternion (w, x, y, z)
    w, x, y, z = (q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-9)).T
    rt = np.stack([np.stack([1 - 2 * (y * y + z * z), 2 * (x * y + w * z), 2 * (x * z - w * y)], -1),
                   np.stack([2 * (x * y - w * z), 1 - 2 * (x * x + z * z), 2 * (y * z + w * x)], -1)], 1)
    v_body = np.einsum("nij,nj->ni", rt, v_world)
    ok = use & np.all(np.isfinite(traj.vel_enu_m_s), axis=1) & np.all(np.isfinite(traj.quat_wxyz), axis=1)
    if ok.sum() < 500 or float(np.min(np.std(v_body[ok], axis=0))) < MIN_DRAG_SPEED_STD_M_S:
        return None, (f"the flight's body velocity varies too little for a drag fit ({int(ok.sum())} rows, std "
                      f"{np.round(np.std(v_body[ok], axis=0), 3).tolist() if ok.any() else []} m/s, needs "
                      f"{MIN_DRAG_SPEED_STD_M_S:g})")
    drag, ci, r2 = [], [], []
    for axis in (0, 1):
        coef, cis, r2a = _linfit(np.column_stack([-v_body[ok, axis] / mass_kg, np.ones(ok.sum())]),
                                 traj.accel_flu_m_s2[ok, axis])
        drag.append(float(coef[0]))
        ci.append(float(cis[0]))
        r2.append(r2a)
    if not all(d > 0 and c < MAX_REL_CI * d for d, c in zip(drag, ci)):
        return None, f"the flight does not pin it down: x, y {drag[0]:.3g} +- {ci[0]:.2g}, {drag[1]:.3g} +- {ci[1]:.2g}"
    dz = float(base.params["drag_n_per_m_s"][2])
    return Fit("drag_n_per_m_s", [drag[0], drag[1], dz], [ci[0], ci[1], 0.0], r2=min(r2), rows_used=int(ok.sum()),
               rows_rejected=sum(rejected.values()), rejected=rejected, files=files,
               method=(f"least squares of the accelerometer's body x / y on -v_body / m (mass {mass_kg:g} kg) with an "
                       f"offset, over the flying rows; z kept from {base.name} (thrust and drag mix on z); R^2 x "
                       f"{r2[0]:.2f}, y {r2[1]:.2f}")), ""


def identify_flight(traj: Trajectory, base: Profile, mass_kg: float | None = None) -> FlightIdentification:
    """The flight's thrust curve, motor dynamics, inertia and yaw coefficient (see the module doc)."""
    mass = float(mass_kg or traj.meta.get("mass_kg") or base.params["mass_kg"])
    if not traj.has("motor_throttle") or not traj.has("accel_flu_m_s2") or not traj.has("omega_flu_rad_s"):
        missing = [k for k in ("motor_throttle", "accel_flu_m_s2", "omega_flu_rad_s") if not traj.has(k)]
        raise CalibrationError(f"{traj.source}: a flight identification needs motor commands, the accelerometer and "
                               f"the gyro; the log has no {', '.join(missing)}")
    use, skipped, stretches = flying_rows(traj)
    if use.sum() < 500:
        raise CalibrationError(f"{traj.source}: {int(use.sum())} flying rows after leaving out {skipped}; "
                               "a flight identification needs at least 500")
    files = [traj.source.rsplit("/", 1)[-1]]
    n_use = int(use.sum())
    rejected = dict(skipped)
    fits, not_fitted = {}, {}
    p = dict(base.params)
    if traj.has("rotor_rad_s"):   # logged rotor speeds: kf from the flight itself, m f_z = kf sum w_i^2
        w2 = np.sum(traj.rotor_rad_s ** 2, axis=1)
        ok = use & np.isfinite(w2)
        if ok.sum() >= 500:
            lin = robust_lstsq(w2[ok, None], mass * traj.accel_flu_m_s2[ok, 2], lower=[0.0])
            p["kf_n_per_rad2s2"] = float(lin.coef[0])
            fits["kf_n_per_rad2s2"] = Fit(
                "kf_n_per_rad2s2", float(lin.coef[0]), float(lin.ci95[0]), r2=lin.r2, rows_used=int(lin.inliers.sum()),
                rows_rejected=sum(rejected.values()) + int((use & ~ok).sum()) + int((~lin.inliers).sum()),
                rejected={**rejected, "rotor_speed_missing": int((use & ~ok).sum()),
                          "outlier": int((~lin.inliers).sum())}, files=files,
                method=(f"robust least squares m f_z = kf sum w_i^2 through the origin over the flying rows (logged "
                        f"rotor speeds, the accelerometer's z, mass {mass:g} kg)" + lin.ci_note()))
    drag, why = _fit_drag(traj, base, mass, use, rejected, files)
    if drag is not None:
        fits["drag_n_per_m_s"] = drag
    else:
        not_fitted["drag_n_per_m_s"] = why
    u_used = traj.motor_throttle[use]
    lo_u, hi_u = (float(v) for v in np.percentile(u_used, [2, 98]))
    fit_curve = hi_u - lo_u >= MIN_COMMAND_SPAN
    if not fit_curve:
        for name in ("throttle_to_omega_rad_s", "omega_max_rad_s"):
            not_fitted[name] = (f"the flight's commands span only u = {lo_u:.2f}..{hi_u:.2f} (2-98 %): too narrow for "
                                f"a throttle curve (needs {MIN_COMMAND_SPAN:g}); the base's curve is used for the "
                                "motor dynamics")
    solutions, delay, r, by_delay, n_eff = _fit_thrust(traj, p, mass, use, fit_curve)
    t95 = stats.t.ppf(0.975, max(n_eff - 6, 1))
    x2, cov2 = solutions["two_tau"]
    ci2 = t95 * np.sqrt(np.clip(np.diag(cov2), 0, None))
    x, cov = solutions["one_tau"]
    ci = t95 * np.sqrt(np.clip(np.diag(cov), 0, None))
    tau_note = ""
    if np.all(ci2[3:] < MAX_REL_CI * x2[3:]):
        x, cov, ci = x2, cov2, ci2
    else:
        tau_note = (f"one time constant for both directions: fitted apart they are up {x2[3]:.3g} +- {ci2[3]:.2g} s, "
                    f"down {x2[4]:.3g} +- {ci2[4]:.2g} s, which the flight does not separate")
        x, ci = np.r_[x, x[3]], np.r_[ci, ci[3]]
    fz = traj.accel_flu_m_s2[use, 2]
    sst = float(np.sum((fz - fz.mean()) ** 2))
    r2 = 1 - float(r @ r) / sst if sst > 0 else math.nan
    u_range = [float(np.min(traj.motor_throttle[use])), float(np.max(traj.motor_throttle[use]))]
    common = dict(r2=r2, rows_used=n_use, rows_rejected=sum(rejected.values()), rejected=rejected, files=files)
    kf_from = ("fitted above from the logged rotor speeds" if "kf_n_per_rad2s2" in fits else
               f"kept from {base.name} (without rotor speeds only kf w(u)^2 is seen)")
    how = (f"the sim's motor model (sim.core.motor_response) driven by the logged commands, kf = "
           f"{p['kf_n_per_rad2s2']:.4g} {kf_from}, "
           f"least squares against the accelerometer's z (mass {mass:g} kg), delay on a {DELAY_GRID_S[1] * 1e3:.0f} ms "
           f"grid; 95 % CI with {n_eff:.0f} effective of {len(r)} rows")
    if fit_curve:
        fits["throttle_to_omega_rad_s"] = Fit("throttle_to_omega_rad_s", [float(v) for v in x[:3]],
                                              [float(v) for v in ci[:3]], method=how,
                                              extra={"throttle_range": u_range}, **common)
        top_ci = float(t95 * np.sqrt(max(np.ones(3) @ cov[:3, :3] @ np.ones(3), 0)))
        fits["omega_max_rad_s"] = Fit("omega_max_rad_s", float(x[0] + x[1] + x[2]), top_ci,
                                      method="the fitted throttle curve at u = 1" + (
                                          "" if u_range[1] >= 0.98 else
                                          f" (extrapolated: the flight reaches u = {u_range[1]:.2f})"), **common)
    for k, name in ((3, "motor_tau_up_s"), (4, "motor_tau_down_s")):
        fits[name] = Fit(name, float(x[k]), float(ci[k]), method=how + (f"; {tau_note}" if tau_note else ""), **common)
    fits["motor_delay_s"] = Fit("motor_delay_s", delay, _delay_ci(by_delay, n_eff, len(r)), method=how,
                                extra={"ssr_by_delay_s": {f"{d:.3f}": v for d, v in sorted(by_delay.items())}}, **common)
    for name in ("motor_tau_up_s", "motor_tau_down_s", "motor_delay_s"):
        f = fits[name]
        if not (f.ci95 < MAX_REL_CI * f.value or (name == "motor_delay_s" and f.ci95 <= MAX_DELAY_CI_S)):
            not_fitted[name] = f"the flight does not pin it down: {f.value:.3g} +- {f.ci95:.3g} s"
            del fits[name]
    if traj.has("rotor_rad_s"):    # rotor speeds and commands logged: the motor's timing measured directly
        lag = rotor_lag_from_rpm(traj, p, use)
        x[3] = x[4] = lag["motor_tau_s"]
        delay = lag["motor_delay_s"]
        for name, value in (("motor_tau_up_s", x[3]), ("motor_tau_down_s", x[4]), ("motor_delay_s", delay)):
            not_fitted.pop(name, None)
            spread = abs(lag["motor_tau_s"] - lag["motor_tau_s_other_half"])   # the two halves' difference
            fits[name] = Fit(name, float(value), ROTOR_LAG_DELAYS_S[1] / 2 if name == "motor_delay_s" else
                             float(spread if math.isfinite(spread) else value),
                             r2=lag["r2_fit"], rows_used=lag["rows_fit"], rows_rejected=sum(rejected.values()),
                             rejected=rejected, files=files, method=lag["method"],
                             extra={"r2_held_out": lag["r2_test"], "rows_held_out": lag["rows_test"],
                                    "accelerometer_fit": how})

    # inertia, CoM offset and the yaw coefficient from the angular accelerations
    p.update(throttle_to_omega_rad_s=[float(v) for v in x[:3]], motor_tau_up_s=float(x[3]),
             motor_tau_down_s=float(x[4]), motor_delay_s=delay)   # the fitted motor, pinned down or not
    ok, dw, f = _angular(traj, p, use, mass)
    J = np.array(base.params["inertia_kg_m2"], float)
    figures = {"battery_discharge": _fit_discharge(traj, p, mass, use)}
    ang = {}
    # The model's torque carries the error (per-motor thrust differences, what the controller does
    # between rows); the gyro is precise. So the torque is regressed on the measured angular
    # acceleration, not the other way round (that would shrink the slope: errors in variables):
    #   tau_x,model = J_x dw_x/dt + y_c sum T,   tau_y,model = J_y dw_y/dt - x_c sum T
    for axis, feat, sign in ((0, "tau_x", +1.0), (1, "tau_y", -1.0)):
        X = np.column_stack([dw[ok, axis], f["total"][ok]])
        coef, cis, r2a = _linfit(X, f[feat][ok])
        if not coef[0] > 0:
            not_fitted["inertia_kg_m2"] = (f"axis {'xy'[axis]}: the model's torque does not follow the angular "
                                           f"acceleration (slope {coef[0]:.3g})")
            break
        ang[axis] = {"J": coef[0], "J_ci95": cis[0], "r2": r2a, "com_offset_m": sign * coef[1],
                     "com_offset_ci95_m": cis[1]}
    if len(ang) == 2:
        jz_ratio = J[2] / (J[0] + J[1])
        jz = jz_ratio * (ang[0]["J"] + ang[1]["J"])
        X = np.column_stack([dw[ok, 2], np.ones(ok.sum())])
        coef, cis, r2z = _linfit(X, f["yaw"][ok])        # sum -SPIN w^2 = (J_z / km) dw_z/dt + b
        jz_over_km = coef[0]
        km = jz / jz_over_km if jz_over_km > 0 else math.nan
        figures["yaw"] = {"jz_over_km": jz_over_km, "ci95": cis[0], "r2": r2z, "jz_from_base_ratio": jz_ratio}
        rel = max(ang[0]["J_ci95"] / ang[0]["J"], ang[1]["J_ci95"] / ang[1]["J"])
        inertia = [ang[0]["J"], ang[1]["J"], jz]
        jmethod = ("least squares of the model's roll / pitch torques (its rotor speeds from the logged commands) on "
                   f"the differentiated gyro (Savitzky-Golay, {SMOOTH_S * 1e3:.0f} ms, the same filter on both), with "
                   f"a centre-of-mass offset term; J_z = J_x + J_y scaled by {base.name}'s J_z / (J_x + J_y) = "
                   f"{jz_ratio:.3f} (a flight's yaw gives km / J_z only)")
        if rel < MAX_REL_CI:
            fits["inertia_kg_m2"] = Fit("inertia_kg_m2", inertia, [ang[0]["J_ci95"], ang[1]["J_ci95"], jz * rel],
                                        r2=min(ang[0]["r2"], ang[1]["r2"]), rows_used=int(ok.sum()),
                                        rows_rejected=sum(rejected.values()), rejected=rejected, method=jmethod,
                                        files=files, extra={"per_axis": {"xy"[k]: v for k, v in ang.items()}})
        else:
            not_fitted["inertia_kg_m2"] = f"the flight does not pin it down (95 % CI {100 * rel:.0f} % of the value)"
        if km > 0 and cis[0] < MAX_REL_CI * jz_over_km and "inertia_kg_m2" in fits:
            fits["km_nm_per_rad2s2"] = Fit("km_nm_per_rad2s2", float(km),
                                           float(km * math.hypot(cis[0] / jz_over_km, rel)),
                                           r2=r2z, rows_used=int(ok.sum()), rows_rejected=sum(rejected.values()),
                                           rejected=rejected, files=files,
                                           method="sum -SPIN_i w_i^2 of the model's rotor speeds regressed on the "
                                                  "differentiated yaw rate: J_z / km, with the J_z above")
        else:
            not_fitted["km_nm_per_rad2s2"] = (f"the flight's yaw does not pin it down (J_z / km = {jz_over_km:.3g} +- "
                                              f"{cis[0]:.3g}, or the inertia was not fitted)")
        figures["com_offset_m"] = [ang[0]["com_offset_m"], ang[1]["com_offset_m"]]
        figures["com_offset_note"] = ("x, y of the centre of mass from the geometric centre (the sim has no such "
                                      "field: reported, not in the profile)")
    return FlightIdentification(fits=fits, not_fitted=not_fitted, skipped=skipped, used_rows=n_use,
                                stretches=stretches, figures=rounded(figures))


ROTOR_LAG_DELAYS_S = np.arange(0.0, 0.031, 0.002)


def rotor_lag_from_rpm(traj: Trajectory, params: dict, use: np.ndarray, split_s: float | None = None) -> dict:
    """Motor delay and time constant from logged rotor speeds against logged commands (a log with
    both, e.g. an RPM deck): the sim's motor model driven by the commands, each motor's logged speed
    regressed on it (gain and offset per motor absorb the curve's level, so only the timing is
    fitted), delay on a 2 ms grid, one time constant. Fitted on the `use` rows before `split_s`
    (default: the first half of them) and scored (R^2) on the rows after it. A lag of the speed
    sensor itself adds to both figures: they bound the motor's from above."""
    rows = np.flatnonzero(use & np.all(np.isfinite(traj.rotor_rad_s), axis=1))
    if len(rows) < 500:
        raise CalibrationError(f"{traj.source}: {len(rows)} flying rows with rotor speeds; a rotor lag fit needs 500")
    split_s = float(traj.t_s[rows[len(rows) // 2]]) if split_s is None else float(split_s)
    fit_rows, test_rows = rows[traj.t_s[rows] < split_s], rows[traj.t_s[rows] >= split_s]

    # a row logs the command just sent and the speed measured before it acts: the model's speed after
    # the step of row k-1 is what row k measured (so a delay of 0 is a motor that answers within the step)
    same = np.r_[False, traj.segment[1:] == traj.segment[:-1]]
    fit_rows, test_rows = fit_rows[same[fit_rows]], test_rows[same[test_rows]]

    def ssr(tau: float, delay: float, where: np.ndarray) -> tuple[float, float]:
        w = rotor_model(traj, {**params, "motor_tau_up_s": tau, "motor_tau_down_s": tau, "motor_delay_s": delay})
        w = np.roll(w, 1, axis=0)
        res = tot = 0.0
        for m in range(4):
            x, y = w[where, m], traj.rotor_rad_s[where, m]
            coef = np.linalg.lstsq(np.column_stack([x, np.ones(len(x))]), y, rcond=None)[0]
            res += float(np.sum((y - coef[0] * x - coef[1]) ** 2))
            tot += float(np.sum((y - y.mean()) ** 2))
        return res, 1.0 - res / tot

    best = None
    for delay in ROTOR_LAG_DELAYS_S:
        opt = optimize.minimize_scalar(lambda tau: ssr(tau, delay, fit_rows)[0], bounds=(0.003, 0.3), method="bounded",
                                       options={"xatol": 5e-4})
        if best is None or opt.fun < best[0]:
            best = (float(opt.fun), float(delay), float(opt.x))
    _, delay, tau = best
    other = optimize.minimize_scalar(lambda t: ssr(t, delay, test_rows)[0], bounds=(0.003, 0.3), method="bounded",
                                     options={"xatol": 5e-4}).x if len(test_rows) >= 100 else math.nan
    return {"motor_delay_s": delay, "motor_tau_s": tau, "motor_tau_s_other_half": float(other),
            "fit_until_s": split_s, "rows_fit": int(len(fit_rows)),
            "rows_test": int(len(test_rows)), "r2_fit": ssr(tau, delay, fit_rows)[1],
            "r2_test": ssr(tau, delay, test_rows)[1] if len(test_rows) >= 100 else None,
            "method": "logged rotor speeds regressed per motor (gain, offset) on the sim's motor model driven by the "
                      f"logged commands; delay on a {ROTOR_LAG_DELAYS_S[1] * 1e3:.0f} ms grid, one time constant; "
                      f"fitted on the flying rows before {split_s:.2f} s, R^2 on those after; ci95: the grid's half step for the "
                      "delay, for tau the difference from a fit on the rows after"}


def hover_seconds(traj: Trajectory, use: np.ndarray) -> np.ndarray:
    """Charge drawn from the battery so far, in hover-equivalent seconds: the integral of mean_i u_i^2
    (current ~ rotor torque ~ w^2 ~ u^2) from the log's start over its median at the flying rows."""
    u2 = np.mean(np.nan_to_num(np.clip(traj.motor_throttle, 0.0, 1.0)) ** 2, axis=1)
    dt = np.r_[0.0, np.diff(traj.t_s)]
    dt[(dt < 0) | (dt > 0.1)] = 0.0          # across a gap nothing is counted
    return np.cumsum(u2 * dt) / max(float(np.median(u2[use])), 1e-9)


def _fit_discharge(traj: Trajectory, params: dict, mass_kg: float, use: np.ndarray) -> dict:
    """The thrust per command falls as the battery discharges (the sim holds one battery voltage per
    episode, the log no voltage): f_z = (kf sum w(u)^2 / m) * (scale - per_s * Q), Q in hover-equivalent
    seconds (`hover_seconds`), by least squares after the thrust fit."""
    w = rotor_model(traj, params)
    pred = params["kf_n_per_rad2s2"] * np.sum(w ** 2, axis=1) / mass_kg
    q = hover_seconds(traj, use)
    coef, ci, r2 = _linfit(np.column_stack([pred[use], -pred[use] * q[use]]), traj.accel_flu_m_s2[use, 2])
    return {"scale": float(coef[0]), "per_hover_s": float(coef[1]), "per_hover_s_ci95": float(ci[1]),
            "model": "f_z = kf sum w(u)^2 / m * (scale - per_hover_s * Q), Q = hover-equivalent seconds since the "
                     "log's start (integral of mean u^2 over its median in flight); not in the profile: the sim "
                     "keeps one battery voltage per episode (battery_v_frac_range)"}


def evaluate_flight(traj: Trajectory, params: dict, mass_kg: float, discharge: dict | None = None) -> dict:
    """The model's error on a flight: specific force z (RMSE, bias, as % of hover g), over the flying
    rows (the cross-validation of a fit on another flight). With `discharge` (from `_fit_discharge`,
    fitted on the other flight) the battery's discharge over this flight is in the model; the figures
    without it are given too."""
    use, skipped, _ = flying_rows(traj)
    w = rotor_model(traj, params)
    fz_pred = params["kf_n_per_rad2s2"] * np.sum(w[use] ** 2, axis=1) / mass_kg
    fz = traj.accel_flu_m_s2[use, 2]
    without = None
    if discharge:
        without = 100 * float(np.sqrt(np.mean((fz_pred - fz) ** 2))) / G_M_S2
        fz_pred = fz_pred * (discharge["scale"] - discharge["per_hover_s"] * hover_seconds(traj, use)[use])
    err = fz_pred - fz
    out = {"file": traj.source.rsplit("/", 1)[-1], "rows_used": int(use.sum()), "skipped": skipped,
           "battery_discharge_modelled": bool(discharge),
           "thrust_rmse_m_s2": float(np.sqrt(np.mean(err ** 2))), "thrust_bias_m_s2": float(np.mean(err)),
           "thrust_rmse_pct_of_hover": float(100 * np.sqrt(np.mean(err ** 2)) / G_M_S2),
           "thrust_bias_pct_of_hover": float(100 * np.mean(err) / G_M_S2),
           "thrust_r2": float(1 - np.sum(err ** 2) / np.sum((fz - fz.mean()) ** 2))}
    # the same, low-passed to 20 Hz: what the thrust curve explains, without the frame's vibration
    k = 25
    if len(fz) > 4 * k:
        kern = np.ones(k) / k
        e_lp = np.convolve(err, kern, "valid")
        out["thrust_rmse_pct_of_hover_lowpass_40hz"] = float(100 * np.sqrt(np.mean(e_lp ** 2)) / G_M_S2)
    if without is not None:
        out["thrust_rmse_pct_of_hover_without_discharge"] = without
    return rounded(out)


def calibrate_flight(flight: str, base: Profile, *, mapping=None, name: str | None = None,
                     mass_kg: float | None = None, test_flight: str | None = None) -> dict:
    """`skyloop calibrate --flight LOG --mapping M`: the identification written into a profile.
    Returns {'profile': JSON object, 'identification', 'problems', 'cross_validation' (on
    `test_flight`, else None), 'trajectory_issues'}."""
    from calibration.calibrate import build_profile, profile_problems
    from calibration.flightlogs import read_flight_log

    traj = read_flight_log(flight, mapping)
    mass = float(mass_kg or traj.meta.get("mass_kg") or base.params["mass_kg"])
    ident = identify_flight(traj, base, mass)
    fits = ident.fits
    profile = build_profile(base, fits, name=name, mass_kg=mass,
                            battery_v=(base.params["battery_v_nominal"], f"base profile {base.name}"),
                            files=[traj.source.rsplit("/", 1)[-1]], not_fitted=ident.not_fitted)
    profile["calibration"].update(skipped_rows=ident.skipped, flying_stretches_s=rounded(ident.stretches),
                                  figures=ident.figures, log_issues=list(traj.issues))
    if mass_kg is None:
        profile["source"]["mass_kg"] = (f"the log's mapping ({traj.meta.get('path', 'mapping')})"
                                        if traj.meta.get("mass_kg") else profile["source"].get("mass_kg"))
    cv = None
    if test_flight:
        test = read_flight_log(test_flight, mapping)
        discharge = ident.figures.get("battery_discharge")
        cv = {"fitted_on": ident_file(traj), "tested_on": ident_file(test),
              "test": evaluate_flight(test, profile["params"], mass, discharge),
              "train": evaluate_flight(traj, profile["params"], mass, discharge),
              "base_on_test": evaluate_flight(test, base.params, mass)}
        profile["calibration"]["cross_validation"] = cv
    return {"profile": profile, "identification": ident, "problems": profile_problems(profile),
            "cross_validation": cv, "trajectory_issues": list(traj.issues)}


def ident_file(traj: Trajectory) -> str:
    return traj.source.rsplit("/", 1)[-1]
