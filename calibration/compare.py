"""Sim vs real: replay a real flight (a `flightlogs.Trajectory`) in the sim and measure where they differ.

    mc = model_check(traj, profile)        # the force / torque model, sample by sample
    rp = replay(traj, profile)             # open loop from the logged state every `every_s`, horizons 0.1 / 0.5 / 1 s
    cl = closed_loop(traj, profile)        # our own flights: the same policy, course and start, in the sim

Each returns (metrics, series): metrics is JSON-able, series holds the arrays the report draws.

Model check. At every sample the sim is put in the logged state (attitude, velocity, body rates,
rotor speeds) and stepped once, one physics step, with the rotors held at the logged speeds (the
motor delay is set to at least one step, so the command history the sim refills from the rotor
speeds is what acts). The change of velocity and body rates over that step is the model's
acceleration: as specific force in the body frame (what an accelerometer measures) and as
angular acceleration, compared with the accelerometer and the differentiated gyro after the same
Savitzky-Golay smoothing (`smooth_s`) on both. This is the sim's own force / torque model, reached
through the binding by stepping (the binding has no function that returns the forces alone).
Rotor speeds are the logged ones, or, where only commands were logged, the commands through the
profile's throttle curve and motor model (`sim.core.motor_response`).

Replay. Every `every_s` within a gap-free stretch, the sim starts at the logged state and is fed
the logged commands (the policy's actions for our flights, motor throttles otherwise, or the
logged rotor speeds through the inverse throttle curve); the position and attitude errors after
each horizon are the standard multi-step prediction error.
"""
from __future__ import annotations

import logging
import math

import numpy as np
from scipy.signal import savgol_filter

from calibration.data import G_M_S2
from calibration.flightlogs import Trajectory
from calibration.hover import hover_closure
from skyloop import frames
from sim.core import ACTION_HISTORY, omega_to_throttle
from sim.env import DroneEnv
from sim.profiles import Profile

log = logging.getLogger(__name__)

HORIZONS_S = (0.1, 0.5, 1.0)
AXES = "xyz"


class CompareError(ValueError):
    """A log that cannot give the asked-for comparison: says what is missing and what to do."""


# ---------------------------------------------------------------- helpers

def flight_profile(profile: Profile, mass_kg: float | None) -> Profile:
    """The nominal drone of `profile`, at the flight's take-off mass when it is known."""
    nominal = profile.nominal()
    if mass_kg is not None:
        nominal.params["mass_kg"] = float(mass_kg)
    return nominal


def sim_env(profile: Profile, n: int, control_hz: float, action_mode: str = "motor",
            physics_dt_s: float = 0.002) -> DroneEnv:
    """n exact nominal drones, no task limits, `control_hz` steps of whole physics substeps."""
    substeps = max(1, round(1.0 / (control_hz * physics_dt_s)))
    task = {"physics_dt_s": 1.0 / (control_hz * substeps), "control_hz": control_hz, "bounds_m": [1e4] * 3,
            "episode_s": 1e5, "ground_start_prob": 0.0}
    env = DroneEnv(max(n, 1), profile, action_mode=action_mode, task=task, randomize=False)
    env.reset(seed=0)
    return env


def _place(env: DroneEnv, drones, state: dict, held_actions, battery_frac=None) -> None:
    """Writes many drones' states at once, then lets the sim refill each one's command history."""
    d = env.core.drone
    for name, values in state.items():
        d[name][:, drones] = np.asarray(values, np.float32).T
    if battery_frac is not None:          # the motors run at the logged battery voltage (as the sim models it)
        d["omega_scale"][0, drones] = battery_frac
        d["battery_v"][0, drones] = battery_frac * float(env.profile.params["battery_v_nominal"])
    for k, i in enumerate(drones):
        env.core.sync(int(i), held_actions[k])


def _per_segment(fn, x: np.ndarray, segment: np.ndarray, window: int) -> np.ndarray:
    """fn applied to each gap-free stretch of x (NaN where a stretch is too short or x is NaN)."""
    out = np.full(x.shape, np.nan)
    for s in np.unique(segment):
        idx = np.flatnonzero(segment == s)
        if len(idx) <= window:
            continue
        xs = x[idx]
        good = np.all(np.isfinite(xs.reshape(len(xs), -1)), axis=1)
        filled = xs.copy()
        if not good.all():                 # short holes filled only for the filter, then blanked again
            if good.sum() <= window:
                continue
            for col in range(xs.reshape(len(xs), -1).shape[1]):
                v = filled.reshape(len(xs), -1)[:, col]
                v[~good] = np.interp(np.flatnonzero(~good), np.flatnonzero(good), v[good])
        y = fn(filled)
        half = window // 2
        y[:half] = np.nan
        y[-half:] = np.nan
        y[~good] = np.nan
        out[idx] = y
    return out


def _smoother(dt: float, smooth_s: float, deriv: int = 0):
    window = max(5, int(round(smooth_s / dt)) | 1)
    return (lambda x: savgol_filter(x, window, 2, deriv=deriv, delta=dt, axis=0)), window


def fit_stats(pred: np.ndarray, meas: np.ndarray) -> dict:
    """R^2 (1 - SS_res / SS_tot about the measured mean) and RMSE per axis, over rows where both are finite."""
    out = {"r2": {}, "rmse": {}, "nrmse": {}, "bias": {}, "r2_offset_removed": {}, "samples": 0}
    ok = np.all(np.isfinite(pred) & np.isfinite(meas), axis=1)
    out["samples"] = int(ok.sum())
    for k, a in enumerate(AXES[:pred.shape[1]]):
        p, m = pred[ok, k], meas[ok, k]
        if len(m) < 2 or not np.ptp(m) > 0:
            out["r2"][a] = out["rmse"][a] = out["nrmse"][a] = out["bias"][a] = out["r2_offset_removed"][a] = None
            continue
        ss_tot, bias = float(np.sum((m - m.mean()) ** 2)), float(np.mean(p - m))
        out["r2"][a] = 1.0 - float(np.sum((m - p) ** 2)) / ss_tot
        out["rmse"][a] = float(np.sqrt(np.mean((m - p) ** 2)))
        out["nrmse"][a] = out["rmse"][a] / float(np.std(m))   # RMSE in units of the measured spread
        out["bias"][a] = bias
        out["r2_offset_removed"][a] = 1.0 - float(np.sum((m - p + bias) ** 2)) / ss_tot   # shape right, offset wrong?
    return out


def _throttle_to_omega(params: dict, u, v_frac=1.0) -> np.ndarray:
    c0, c1, c2 = params["throttle_to_omega_rad_s"]
    u = np.asarray(u, float)
    return (c0 + c1 * u + c2 * u * u) * v_frac


def _omega_to_throttle(params: dict, omega, v_frac=1.0) -> np.ndarray:
    """The inverse of the profile's throttle curve (the rising root), clipped to 0..1."""
    return omega_to_throttle(params["throttle_to_omega_rad_s"], np.asarray(omega, float) / v_frac)


def _battery_frac(traj: Trajectory, profile: Profile) -> np.ndarray:
    v_nom = float(profile.params["battery_v_nominal"])
    frac = traj.battery_v / v_nom
    return np.where(np.isfinite(frac) & (frac > 0.3), frac, 1.0)


def rotor_speeds(traj: Trajectory, profile: Profile) -> tuple[np.ndarray, str]:
    """Per-sample rotor speeds [n, 4]: the logged ones, else the logged commands through the profile's
    throttle curve (at the logged battery voltage) and its motor lag and delay (the sim's own motor model)."""
    from sim.core import motor_response
    if traj.has("rotor_rad_s"):
        return traj.rotor_rad_s, "logged rotor speeds"
    if not traj.has("motor_throttle"):
        raise CompareError(f"{traj.source}: the log has neither rotor speeds nor motor commands; the model check needs "
                           "one of them (log ESC RPM, or the motor outputs)")
    out = np.full((traj.n, 4), np.nan)
    frac = _battery_frac(traj, profile)
    for s in np.unique(traj.segment):
        idx = np.flatnonzero(traj.segment == s)
        if len(idx) < 2:
            continue
        dt = float(np.median(np.diff(traj.t_s[idx])))
        fine = max(1, math.ceil(dt / 0.001))      # the motor model runs at <= 1 ms, whatever the log's rate
        v = float(np.median(frac[idx]))
        for m in range(4):
            u = traj.motor_throttle[idx, m]
            good = np.isfinite(u)
            if good.sum() < 2:
                continue
            u = np.interp(np.arange(len(u)), np.flatnonzero(good), u[good])
            w0 = float(_throttle_to_omega(profile.params, u[0], v))
            out[idx, m] = motor_response(profile.params, np.repeat(u, fine), dt / fine, v, w0)[fine - 1::fine]
            out[idx[~good], m] = np.nan
    return out, f"motor commands through {profile.name}'s throttle curve and motor model"


# ---------------------------------------------------------------- 1. model check

#: motors below this share of full throttle (or of the log's top rotor speed) are off: a vehicle on the ground
MOTORS_OFF_FRACTION = 0.05


def off_ground(traj: Trajectory, margin_m: float = 0.05) -> np.ndarray:
    """Samples clear of the ground (which the model check does not model): the motors on (any logged
    rotor speed or command above MOTORS_OFF_FRACTION), and where the log takes off (its height
    varies by over 0.3 m) more than margin_m above its lowest point."""
    on = np.ones(traj.n, bool)
    with np.errstate(invalid="ignore"):
        if traj.has("rotor_rad_s"):
            top = float(np.nanmax(traj.rotor_rad_s))
            on = np.nanmax(np.nan_to_num(traj.rotor_rad_s, nan=0.0), axis=1) > MOTORS_OFF_FRACTION * top
        elif traj.has("motor_throttle"):
            on = np.nanmax(np.nan_to_num(traj.motor_throttle, nan=0.0), axis=1) > MOTORS_OFF_FRACTION
    z = traj.pos_enu_m[:, 2]
    if not np.isfinite(z).any() or np.nanmax(z) - np.nanmin(z) <= 0.3:
        return on
    with np.errstate(invalid="ignore"):
        return on & (z > np.nanmin(z) + margin_m)


#: a measured axis that varies less than this (std, m/s^2: 1 % of g) holds no signal for R^2
MIN_STD_FOR_R2_M_S2 = 0.01 * G_M_S2


def _what_it_supports(stats: dict, meas_f: np.ndarray) -> dict:
    """Per axis, what the model check's figures mean on this flight: R^2 only where the measured
    specific force varies (more than MIN_STD_FOR_R2_M_S2) and the model's offset is smaller than
    that variation; else why not, and what to read instead (bias, RMSE, R^2 with the offset removed)."""
    out = {}
    for k, a in enumerate(AXES):
        std = float(np.nanstd(meas_f[:, k])) if np.isfinite(meas_f[:, k]).any() else 0.0
        bias = stats["bias"].get(a)
        if bias is None or std < MIN_STD_FOR_R2_M_S2:
            out[a] = (f"bias and rmse only: the measured specific force varies by {std:.3g} m/s^2 (std): "
                      "R^2 would measure the sensor noise")
        elif abs(bias) > std:
            out[a] = (f"bias, rmse and r2_offset_removed: the model's offset ({bias:+.3g} m/s^2) is larger than the "
                      f"measured variation ({std:.3g} m/s^2 std, {100 * std / G_M_S2:.1f} % of g), so R^2 is the "
                      "offset's, not the shape's")
        else:
            out[a] = "r2, nrmse and bias"
    return out


def _hover_window(traj: Trajectory, airborne: np.ndarray, window_s: float = 1.0) -> tuple[float, float] | None:
    """The stretch of `window_s` where the drone moves least with every motor spinning (`airborne`):
    the hover; None when the log has no such stretch."""
    speed = np.linalg.norm(np.nan_to_num(traj.vel_enu_m_s, nan=np.inf), axis=1)
    best, start = np.inf, None
    for t0 in np.arange(0.0, max(traj.t_s[-1] - window_s, 0.0) + 1e-9, 0.25):
        w = (traj.t_s >= t0) & (traj.t_s < t0 + window_s)
        if w.sum() >= 5 and airborne[w].all() and np.isfinite(score := float(np.mean(speed[w]))) and score < best:
            best, start = score, float(t0)
    return None if start is None else (start, window_s)


def model_check(traj: Trajectory, profile: Profile, mass_kg: float | None = None, smooth_s: float = 0.02,
                hover_window_s: tuple[float, float] | None = None) -> tuple[dict, dict]:
    """Predicted vs measured body acceleration (specific force) and angular acceleration."""
    prof = flight_profile(profile, mass_kg)
    rotor, rotor_source = rotor_speeds(traj, prof)
    if not traj.has("omega_flu_rad_s") or not traj.has("quat_wxyz"):
        raise CompareError(f"{traj.source}: the model check needs the attitude and the gyro")
    vel = traj.vel_enu_m_s if traj.has("vel_enu_m_s") else np.zeros((traj.n, 3))
    ok = np.all(np.isfinite(np.hstack([traj.quat_wxyz, traj.omega_flu_rad_s, vel, rotor])), axis=1) & off_ground(traj)
    idx = np.flatnonzero(ok)
    if len(idx) < 10:
        grounded = int((~off_ground(traj)).sum())
        raise CompareError(f"{traj.source}: {len(idx)} samples in the air with attitude, gyro and rotor speeds all "
                           f"valid ({grounded} of {traj.n} samples on the ground or with the motors off: left out)")
    physics_dt = 0.001
    prof.params["motor_delay_s"] = max(float(prof.params["motor_delay_s"]), physics_dt)   # rotors held over the step
    env = sim_env(prof, len(idx), 1.0 / physics_dt)
    state = {"pos_enu_m": np.tile([0.0, 0.0, 1000.0], (len(idx), 1)),   # clear of the ground; position is not a force
             "vel_enu_m_s": vel[idx], "quat_wxyz": traj.quat_wxyz[idx], "omega_flu_rad_s": traj.omega_flu_rad_s[idx],
             "rotor_rad_s": rotor[idx]}
    hover_action = float(env.core.drone["hover_action"][0, 0])
    _place(env, np.arange(len(idx)), state, np.full((len(idx), 4), hover_action))
    d = env.core.drone
    v0, w0, q0 = d["vel_enu_m_s"].T.astype(float).copy(), d["omega_flu_rad_s"].T.astype(float).copy(), \
        d["quat_wxyz"].T.astype(float).copy()
    dt = float(env.core.physics_dt_s)
    env.step_physics(np.full((env.num_envs, 4), hover_action, np.float32))
    acc_world = (d["vel_enu_m_s"].T - v0) / dt
    pred_f = np.full((traj.n, 3), np.nan)
    pred_alpha = np.full((traj.n, 3), np.nan)
    pred_f[idx] = np.array([frames.rotate_inverse(q, a + [0.0, 0.0, G_M_S2]) for q, a in zip(q0, acc_world)])
    pred_alpha[idx] = (d["omega_flu_rad_s"].T - w0) / dt

    step = float(np.median(np.diff(traj.t_s)))
    smooth, window = _smoother(step, smooth_s)
    deriv, _ = _smoother(step, smooth_s, deriv=1)
    if traj.has("accel_flu_m_s2"):
        meas_f, accel_source = _per_segment(smooth, traj.accel_flu_m_s2, traj.segment, window), "accelerometer"
    elif traj.has("vel_enu_m_s"):
        acc = _per_segment(deriv, traj.vel_enu_m_s, traj.segment, window)
        meas_f = np.array([frames.rotate_inverse(q, a + [0.0, 0.0, G_M_S2]) for q, a in zip(traj.quat_wxyz, acc)])
        accel_source = "differentiated velocity (the log has no accelerometer)"
    else:
        raise CompareError(f"{traj.source}: no accelerometer and no velocity to compare the thrust with")
    meas_alpha = _per_segment(deriv, traj.omega_flu_rad_s, traj.segment, window)
    pred_f_s = _per_segment(smooth, pred_f, traj.segment, window)
    pred_alpha_s = _per_segment(smooth, pred_alpha, traj.segment, window)
    accel = fit_stats(pred_f_s, meas_f)
    alpha = fit_stats(pred_alpha_s, meas_alpha)

    kf, mass = float(prof.params["kf_n_per_rad2s2"]), float(prof.params["mass_kg"])
    with np.errstate(invalid="ignore"):
        airborne = np.all(rotor > 0.2 * float(prof.params["omega_max_rad_s"]), axis=1) & off_ground(traj, 0.2)
    start, length = hover_window_s or _hover_window(traj, airborne) or (0.0, 0.0)
    w = (traj.t_s >= start) & (traj.t_s < start + length) & np.all(np.isfinite(rotor) & (rotor > 0), axis=1)
    hover, hover_missing = None, None
    if hover_window_s is None and not airborne.any():
        hover_missing = ("no row with every motor above 20 % of omega_max and the drone 0.2 m above its lowest point: "
                         "it never flew (or the rotor speeds / position are missing)")
    elif w.sum() < 5:
        hover_missing = (f"{int(w.sum())} rows with every rotor speed valid in the hover window "
                         f"{start:.2f}..{start + length:.2f} s; give --hover-window-s where the drone hovers")
    if w.sum() >= 5 and hover_missing is None:
        rpm = np.median(rotor[w], axis=0) * 60.0 / (2 * math.pi)
        hover = hover_closure(kf, rpm, mass)
        hover.update(window_s=[float(start), float(start + length)], samples=int(w.sum()),
                     kf_that_closes=kf / hover["closure"], mass_kg_that_closes=mass * hover["closure"])
    thrust_n = kf * np.sum(rotor ** 2, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = thrust_n / (mass * meas_f[:, 2])
    ratio = ratio[np.isfinite(ratio)]
    metrics = {
        "profile": profile.name, "mass_kg": mass, "kf_n_per_rad2s2": kf, "rotor_speed_source": rotor_source,
        "accel_source": accel_source, "smooth_s": window * step, "physics_dt_s": dt,
        "r2": accel["r2"], "rmse_m_s2": accel["rmse"], "bias_m_s2": accel["bias"],
        "r2_offset_removed": accel["r2_offset_removed"], "samples": accel["samples"],
        "angular": {"r2": alpha["r2"], "rmse_rad_s2": alpha["rmse"], "bias_rad_s2": alpha["bias"],
                    "r2_offset_removed": alpha["r2_offset_removed"], "samples": alpha["samples"]},
        "measured_std_m_s2": {a: float(np.nanstd(meas_f[:, k])) for k, a in enumerate(AXES)},
        "thrust_closure_in_flight": float(np.median(ratio)) if len(ratio) else None,
        "nrmse": accel["nrmse"], "angular_nrmse": alpha["nrmse"],
        "supports": _what_it_supports(accel, meas_f),
    }
    if hover_missing:
        metrics["hover_closure_missing"] = hover_missing
    if not len(ratio):
        metrics["thrust_closure_in_flight_missing"] = "no row with rotor speeds and a vertical specific force together"
    series = {"t_s": traj.t_s, "pred_accel": pred_f_s, "meas_accel": meas_f, "pred_alpha": pred_alpha_s,
              "meas_alpha": meas_alpha}
    return {"model_check": metrics, "hover_closure": hover}, series


# ---------------------------------------------------------------- 2. open-loop replay

def _commands(traj: Trajectory, prof: Profile) -> tuple[np.ndarray, str, str]:
    """(actions [n, 4] in [-1, 1], action mode, where they came from)."""
    if traj.action is not None and np.isfinite(traj.action).any():
        mode = str(traj.meta.get("policy_mode", "motor"))
        return traj.action, mode, f"the policy's logged actions ({mode} mode)"
    if traj.has("motor_throttle"):
        return 2.0 * np.clip(traj.motor_throttle, 0, 1) - 1.0, "motor", "logged motor commands (throttle 0..1)"
    if traj.has("rotor_rad_s"):
        u = _omega_to_throttle(prof.params, traj.rotor_rad_s, _battery_frac(traj, prof)[:, None])
        return 2.0 * u - 1.0, "motor", f"logged rotor speeds through {prof.name}'s inverse throttle curve"
    raise CompareError(f"{traj.source}: no commands to replay (no actions, motor outputs or rotor speeds)")


def _attitude_error_deg(q_a: np.ndarray, q_b: np.ndarray) -> np.ndarray:
    dot = np.abs(np.sum(q_a * q_b, axis=1)) / (np.linalg.norm(q_a, axis=1) * np.linalg.norm(q_b, axis=1))
    return np.degrees(2.0 * np.arccos(np.clip(dot, 0.0, 1.0)))


def replay(traj: Trajectory, profile: Profile, mass_kg: float | None = None, every_s: float = 0.5,
           horizons_s=HORIZONS_S, translational: bool = False) -> tuple[dict, dict]:
    """Open-loop multi-step prediction error from the logged state, every `every_s`.

    translational=True forces the attitude, body rates and rotor speeds to the logged ones at every
    step, so only position and velocity are predicted: the thrust and drag model on its own, without
    the open-loop attitude drift that dominates a free replay of a vehicle flown by a controller."""
    prof = flight_profile(profile, mass_kg)
    if translational:
        if not traj.has("rotor_rad_s"):
            raise CompareError(f"{traj.source}: a translational replay needs logged rotor speeds")
        prof.params["motor_delay_s"] = max(float(prof.params["motor_delay_s"]), 0.002)   # rotors held over a step
    actions, mode, source = _commands(traj, prof)
    step = float(np.median(np.diff(traj.t_s)))
    steps = {h: max(1, int(round(h / step))) for h in horizons_s}
    longest = max(steps.values())
    start_ok = np.all(np.isfinite(np.hstack([traj.pos_enu_m, traj.vel_enu_m_s, traj.quat_wxyz, traj.omega_flu_rad_s,
                                             actions])), axis=1) & off_ground(traj)
    stride = max(1, int(round(every_s / step)))
    starts = [i for i in range(0, traj.n - steps[min(horizons_s)], stride) if start_ok[i]]
    if not starts:
        raise CompareError(f"{traj.source}: no stretch of {min(horizons_s)} s in the air with a full logged state and "
                           f"commands to replay (position, velocity, attitude, gyro and commands; "
                           f"{int((~off_ground(traj)).sum())} of {traj.n} samples on the ground or with the motors off)")
    starts = np.array(starts)
    env = sim_env(prof, len(starts), 1.0 / step, mode)
    rotor = traj.rotor_rad_s[starts]
    frac = _battery_frac(traj, prof)[starts]
    steady = _throttle_to_omega(prof.params, (actions[starts] + 1) / 2, frac[:, None]) if mode == "motor" else \
        np.full((len(starts), 4), math.sqrt(prof.params["mass_kg"] * G_M_S2 / (4 * prof.params["kf_n_per_rad2s2"])))
    rotor = np.where(np.isfinite(rotor), rotor, steady)
    start_state = {"pos_enu_m": traj.pos_enu_m[starts], "vel_enu_m_s": traj.vel_enu_m_s[starts],
                   "quat_wxyz": traj.quat_wxyz[starts], "omega_flu_rad_s": traj.omega_flu_rad_s[starts],
                   "rotor_rad_s": rotor}
    _place(env, np.arange(len(starts)), start_state, actions[starts], frac)
    n = len(starts)
    # the commands still in the motors' delay line at the start are logged too: feed the last motor_delay_s
    # of them, then put the drones back in the logged start state (the delay line keeps them)
    for k in range(-int(math.ceil(float(prof.params["motor_delay_s"]) / step)), 0):
        j = np.maximum(starts + k, 0)
        past = (starts + k >= 0) & (traj.segment[j] == traj.segment[starts]) & np.all(np.isfinite(actions[j]), axis=1)
        env.step_physics(np.where(past[:, None], actions[j], actions[starts]).astype(np.float32))
    for name, values in start_state.items():
        env.core.drone[name][:] = np.asarray(values, np.float32).T
    valid = np.ones(n, bool)           # the window is still inside one gap-free stretch with commands
    current = actions[starts].astype(np.float32)
    pos_sim = np.full((longest + 1, n, 3), np.nan)
    quat_sim = np.full((longest + 1, n, 4), np.nan)
    pos_sim[0], quat_sim[0] = traj.pos_enu_m[starts], traj.quat_wxyz[starts]
    horizon_valid = {}
    d = env.core.drone
    for k in range(longest):
        j = np.minimum(starts + k, traj.n - 1)
        valid &= (starts + k < traj.n) & (traj.segment[j] == traj.segment[starts])
        fresh = np.all(np.isfinite(actions[j]), axis=1) & valid
        current[fresh] = actions[j][fresh]
        valid &= fresh
        if translational and k > 0:
            forced = np.all(np.isfinite(np.hstack([traj.quat_wxyz[j], traj.omega_flu_rad_s[j], traj.rotor_rad_s[j]])),
                            axis=1)
            valid &= forced
            drones = np.flatnonzero(forced)
            at = j[drones]
            _place(env, drones, {"quat_wxyz": traj.quat_wxyz[at], "omega_flu_rad_s": traj.omega_flu_rad_s[at],
                                 "rotor_rad_s": traj.rotor_rad_s[at]}, current[drones])
        env.step_physics(current)
        pos_sim[k + 1], quat_sim[k + 1] = d["pos_enu_m"].T, d["quat_wxyz"].T
        for h, s in steps.items():
            if s == k + 1:
                horizon_valid[h] = valid & (starts + s < traj.n)
    error_m, error_p90, att_deg, windows, per_window = {}, {}, {}, {}, {}
    for h, s in steps.items():
        ok = horizon_valid.get(h, np.zeros(n, bool))
        j = np.minimum(starts + s, traj.n - 1)
        e = np.linalg.norm(pos_sim[s] - traj.pos_enu_m[j], axis=1)
        a = _attitude_error_deg(quat_sim[s], traj.quat_wxyz[j])
        ok &= np.isfinite(e)
        key = f"{h:g}"
        windows[key] = int(ok.sum())
        error_m[key] = float(np.median(e[ok])) if ok.any() else None
        error_p90[key] = float(np.percentile(e[ok], 90)) if ok.any() else None
        att_deg[key] = float(np.median(a[ok & np.isfinite(a)])) if (ok & np.isfinite(a)).any() else None
        per_window[key] = np.where(ok, e, np.nan)
    if translational:
        source = "logged rotor speeds, attitude and body rates forced every step (translation predicted)"
    metrics = {"profile": profile.name, "command_source": source, "action_mode": mode, "every_s": stride * step,
               "control_hz": 1.0 / step, "error_m": error_m, "error_m_p90": error_p90,
               "attitude_error_deg": att_deg, "windows": windows}
    series = {"starts": starts, "t_s": traj.t_s, "pos_sim": pos_sim, "per_window": per_window, "steps": steps}
    return metrics, series


# ---------------------------------------------------------------- 3. closed-loop replay (our own flights)

def gate_times(course, t_s: np.ndarray, pos_enu_m: np.ndarray, lookahead_m: float = 1.5) -> dict:
    """Gate passes along a path (the runner's own rule) and the lap time (first to last gate)."""
    from flight.course import CourseProgress
    progress = CourseProgress(course, lookahead_m)
    for t, p in zip(t_s, pos_enu_m):
        if np.all(np.isfinite(p)):
            progress.update(p, float(t))
    times = [float(t) for _g, t in progress.passes]
    lap = times[-1] - times[0] if progress.finished and len(times) > 1 else None
    return {"gates_passed": len(times), "gates_total": progress.total_gates, "gate_times_s": times, "lap_time_s": lap}


def closed_loop(traj: Trajectory, profile: Profile, policy_path: str | None = None, lookahead_m: float = 1.5,
                max_time_s: float | None = None) -> tuple[dict, dict]:
    """Flies the logged flight's policy on its course from its start in the sim (the nominal drone of
    `profile`), as the flight runner does: its target rule (the sliding target, or race mode for a
    race-trained policy), the sim's observation function, the policy."""
    from flight.course import CourseProgress, parse_course, races
    from policy_export import load_policy
    from sim.core import OBS_GATES, observe
    meta = traj.meta
    if "course" not in meta:
        raise CompareError(f"{traj.source}: closed-loop replay needs our own flight log (its sidecar names the course "
                           "and the policy)")
    policy_path = policy_path or meta.get("policy")
    if not policy_path:
        raise CompareError(f"{traj.source}: the sidecar names no policy; give --policy")
    course = parse_course(meta["course"], f"{traj.source} sidecar")
    policy = load_policy(policy_path)
    mode = policy.action_mode
    prof = flight_profile(profile, None)
    env = sim_env(prof, 1, policy.control_hz, mode)
    d = env.core.drone
    # the replay starts where the policy took over (after the runner's take-off hold, when the log says)
    flown = traj.t_s >= float(meta.get("policy_from_t_s", 0.0)) - 1e-9
    first = int(np.flatnonzero(flown & np.all(np.isfinite(np.hstack([traj.pos_enu_m, traj.quat_wxyz])), axis=1))[0])
    on_ground = traj.pos_enu_m[first, 2] < 0.05
    hover = float(d["hover_action"][0, 0])
    thrust = -1.0 if on_ground else hover
    hold = np.array([thrust] + ([0.0] * 3 if mode == "ctbr" else [thrust] * 3), np.float32)
    idle = float(d["nom_omega_min"][0, 0] * d["omega_scale"][0, 0])
    omega_hover = math.sqrt(prof.params["mass_kg"] * G_M_S2 / (4 * prof.params["kf_n_per_rad2s2"]))
    _place(env, [0], {"pos_enu_m": traj.pos_enu_m[first:first + 1], "vel_enu_m_s": np.zeros((1, 3)),
                      "quat_wxyz": traj.quat_wxyz[first:first + 1], "omega_flu_rad_s": np.zeros((1, 3)),
                      "rotor_rad_s": np.full((1, 4), idle if on_ground else omega_hover)}, [hold])
    progress = CourseProgress(course, lookahead_m, race=races(policy))
    last_actions = np.tile(hold, ACTION_HISTORY).astype(np.float32)
    pstate = policy.initial_state(1)
    dt = 1.0 / policy.control_hz
    limit = max_time_s or max(2.0 * float(traj.t_s[-1]), 30.0)
    t_sim, p_sim = [0.0], [d["pos_enu_m"][:, 0].astype(float).copy()]
    steps = int(limit / dt)
    for k in range(steps):
        s = env.state(0)
        target = progress.update(s["pos_enu_m"], k * dt)
        if progress.finished or d["crashed"][0, 0] > 0:
            break
        obs = observe(s["pos_enu_m"], s["vel_enu_m_s"], s["quat_wxyz"], s["omega_flu_rad_s"], target, last_actions,
                      hover, gates=progress.next_gates(OBS_GATES))
        action, pstate = policy.run(obs[None], pstate)
        env.step_physics(action)
        last_actions = np.concatenate([action[0], last_actions[:-4]]).astype(np.float32)
        t_sim.append((k + 1) * dt)
        p_sim.append(d["pos_enu_m"][:, 0].astype(float).copy())
    t_sim, p_sim = np.array(t_sim), np.array(p_sim)
    real = gate_times(course, traj.t_s - traj.t_s[first], traj.pos_enu_m, lookahead_m)
    sim = {**gate_times(course, t_sim, p_sim, lookahead_m), "crashed": bool(d["crashed"][0, 0] > 0)}
    overlap = (traj.t_s - traj.t_s[first] >= 0) & (traj.t_s - traj.t_s[first] <= t_sim[-1])
    p_on = np.column_stack([np.interp(traj.t_s[overlap] - traj.t_s[first], t_sim, p_sim[:, k]) for k in range(3)])
    gap = np.linalg.norm(p_on - traj.pos_enu_m[overlap], axis=1)
    gap = gap[np.isfinite(gap)]
    paired = min(len(real["gate_times_s"]), len(sim["gate_times_s"]))
    metrics = {"profile": profile.name, "policy": policy_path, "course": course.name, "action_mode": mode,
               "real": real, "sim": sim,
               "gate_time_diff_s": [s - r for s, r in zip(sim["gate_times_s"][:paired], real["gate_times_s"][:paired])],
               "lap_time_diff_s": (sim["lap_time_s"] - real["lap_time_s"]) if sim["lap_time_s"] and real["lap_time_s"]
               else None,
               "path_error_m": {"median": float(np.median(gap)) if len(gap) else None,
                                "p90": float(np.percentile(gap, 90)) if len(gap) else None,
                                "max": float(gap.max()) if len(gap) else None}}
    series = {"course": course, "t_sim": t_sim, "pos_sim": p_sim, "t_real": traj.t_s - traj.t_s[first],
              "pos_real": traj.pos_enu_m}
    return metrics, series


# ---------------------------------------------------------------- a flight flown by the sim itself

def simulate_flight(profile: Profile, actions: np.ndarray, control_hz: float, start_pos_enu_m=(0.0, 0.0, 1.0),
                    action_mode: str = "motor") -> Trajectory:
    """The exact nominal drone of `profile` flown open loop with `actions` [n, 4] from a hover at
    `start_pos_enu_m`, logged as a real flight would be (state, accelerometer, rotor speeds,
    commands, battery) at `control_hz`: a flight with a known truth, for testing the comparisons."""
    from calibration.flightlogs import build_trajectory
    env = sim_env(profile.nominal(), 1, control_hz, action_mode)
    d = env.core.drone
    hover = math.sqrt(profile.params["mass_kg"] * G_M_S2 / (4 * profile.params["kf_n_per_rad2s2"]))
    _place(env, [0], {"pos_enu_m": [start_pos_enu_m], "vel_enu_m_s": np.zeros((1, 3)), "quat_wxyz": [[1, 0, 0, 0]],
                      "omega_flu_rad_s": np.zeros((1, 3)), "rotor_rad_s": np.full((1, 4), hover)}, [actions[0]])
    names = ("pos_enu_m", "vel_enu_m_s", "quat_wxyz", "omega_flu_rad_s", "rotor_rad_s")
    rows = {k: [] for k in names + ("accel_flu_m_s2",)}
    dt = 1.0 / control_hz
    for a in np.asarray(actions, np.float32):
        s = env.state(0)
        env.step_physics(a[None])
        acc = (d["vel_enu_m_s"][:, 0] - s["vel_enu_m_s"]) / dt
        for k in names:
            rows[k].append(s[k])
        rows["accel_flu_m_s2"].append(frames.rotate_inverse(s["quat_wxyz"], acc + [0.0, 0.0, G_M_S2]))
    n = len(actions)
    streams = {k: np.array(v, float) for k, v in rows.items()}
    streams["battery_v"] = np.full(n, float(profile.params["battery_v_nominal"]))
    if action_mode == "motor":
        streams["motor_throttle"] = (np.asarray(actions, float) + 1.0) / 2.0
    else:
        streams["action"] = np.asarray(actions, float)
    return build_trajectory(np.arange(n) * dt, streams, f"simulated {profile.name}", "sim",
                            meta={"policy_mode": action_mode, "mass_kg": profile.params["mass_kg"]})


# ---------------------------------------------------------------- all of it, for one log and one or more profiles

def _label(profile: Profile, taken: set) -> str:
    label = profile.name
    if label in taken and profile.path:
        label = f"{profile.name} ({profile.path.rsplit('/', 1)[-1]})"
    while label in taken:
        label += "'"
    taken.add(label)
    return label


def compare_flight(traj: Trajectory, profiles: list[Profile], *, mass_kg: float | None = None,
                   policy_path: str | None = None, every_s: float = 0.5, smooth_s: float = 0.02,
                   hover_window_s: tuple[float, float] | None = None, closed: bool = True,
                   controller_replay=None, status=lambda text: None) -> tuple[dict, dict]:
    """Every comparison the log allows, for each profile. Returns (results per profile label with
    their metrics and series, the JSON metrics: the first profile's figures at the top level and
    every profile's under by_profile). What a log cannot give is listed under `skipped`, with why."""
    if mass_kg is None and traj.meta.get("mass_kg"):
        mass_kg, mass_source = float(traj.meta["mass_kg"]), "the log's metadata (mapping 'vehicle' or sidecar)"
    elif mass_kg is not None:
        mass_source = "given (--mass-kg)"
    else:
        mass_source = "each profile's mass_kg"
    own = "course" in traj.meta
    results, taken = {}, set()
    for profile in profiles:
        label = _label(profile, taken)
        metrics, series, skipped = {}, {}, {}
        steps = [("model_check", lambda: model_check(traj, profile, mass_kg, smooth_s, hover_window_s)),
                 ("replay", lambda: replay(traj, profile, mass_kg if not own else None, every_s)),
                 ("replay_translational", lambda: replay(traj, profile, mass_kg if not own else None, every_s,
                                                         translational=True))]
        if closed and own:
            steps.append(("closed_loop", lambda: closed_loop(traj, profile, policy_path)))
        if controller_replay:       # fn(traj, profile, mass_kg, every_s), e.g. calibration.lee_replay's
            steps.append(("replay_controller", lambda: controller_replay(traj, profile, mass_kg if not own else None,
                                                                         every_s)))
        for name, fn in steps:
            status(f"{name.replace('_', ' ')} with {label}")
            try:
                m, s = fn()
            except CompareError as exc:
                skipped[name] = str(exc)
                log.warning("%s skipped: %s", name, exc)
                continue
            metrics.update(m if name == "model_check" else {name: m})
            series[name] = s
        results[label] = {"metrics": {**metrics, "skipped": skipped}, "series": series}
    first = next(iter(results.values()))["metrics"]
    summary = {"log": traj.summary(), "profiles": list(results), "mass_kg": mass_kg, "mass_source": mass_source,
               **{k: first.get(k) for k in ("model_check", "hover_closure", "replay", "replay_translational")},
               **({"replay_controller": first.get("replay_controller")} if controller_replay else {}),
               **({"closed_loop": first.get("closed_loop")} if own else {}),
               "skipped": first.get("skipped", {}),
               "by_profile": {label: r["metrics"] for label, r in results.items()}}
    return results, summary
