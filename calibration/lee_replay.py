"""Free replay with the flight controller in the loop: the Crazyflie's Lee controller flies the sim.

A quadrotor is open-loop unstable, so the logged motor commands replayed open loop tumble the sim
within half a second whatever the model (compare.replay: 129 deg on jana00). The real drone was
held by its controller; this replay closes the same loop in the sim:

    metrics, series = lee_replay(traj, profile)      # windows every `every_s`, horizons 0.1 .. 2 s

Every `every_s` the sim starts in the logged state and the firmware's Lee controller (position PID
+ geometric attitude control, Lee et al. CDC 2010, as in crazyflie-firmware controller_lee.c, run
at the log's 500 Hz) computes thrust and torques from the SIM's state; the sim's own X mixer and
inverse throttle curve turn them into motor commands. Nothing in the loop comes from the log after
the start but the reference. Attitude, body rates and rotor speeds are free.

The reference. The logs hold no setpoints (only state, IMU, rpm and pwm), so the reference is the
flown path: position, the estimator's velocity, and its derivatives (Savitzky-Golay, `smooth_s`)
as acceleration and jerk feed-forward; yaw from the logged attitude. What a window measures is then
whether the sim, held by the same controller, needs the tilt the real drone needed to fly the same
path: drag, thrust, motor lag, inertia. The position error is held small by the loop and says
little. The motor command the sim's controller asks for is compared with the logged one
(`command_bias` and `command_rmse`, share of the logged collective): that is where a wrong
thrust-per-command shows, since the loop hides it in the attitude.

Gains: the firmware's defaults, not fitted to any log. LEE_GAINS["imrclab"] are those of the
IMRCLab fork the data's lab flies (IMRCLab/crazyflie-firmware, controller_lee.c, 2024: the
brushless flights' README names controller 5, Lee); LEE_GAINS["bitcraze"] are upstream's
(bitcraze/crazyflie-firmware, controller_lee.c). Both are run and reported, on every flight.
"""
from __future__ import annotations

import math

import numpy as np

from calibration.compare import (CompareError, _attitude_error_deg, _battery_frac, _commands, _per_segment, _place,
                                 _smoother, flight_profile, off_ground, sim_env)
from calibration.flightid import MOTOR_MX, MOTOR_MY, MOTOR_SPIN
from calibration.flightlogs import Trajectory
from sim.core import omega_to_throttle
from sim.profiles import Profile

HORIZONS_S = (0.1, 0.5, 1.0, 2.0)
GRAVITY_M_S2 = 9.81          # the firmware's GRAVITY_MAGNITUDE

#: per axis x, y, z: position P (1/s^2), D (1/s), I (1/s^3); attitude KR (N m / rad), Komega (N m s / rad), KI (N m / rad s)
LEE_GAINS = {
    "imrclab": {"kp": [7.0, 7.0, 7.0], "kd": [4.0, 4.0, 4.0], "ki": [0.0, 0.0, 0.0],
                "kr": [0.007, 0.007, 0.008], "kw": [0.00115, 0.00115, 0.002], "ki_att": [0.03, 0.03, 0.03]},
    "bitcraze": {"kp": [9.0, 9.0, 9.0], "kd": [7.0, 7.0, 7.0], "ki": [5.0, 5.0, 5.0],
                 "kr": [0.0055, 0.0055, 0.01], "kw": [0.0013, 0.0013, 0.002], "ki_att": [0.012, 0.018, 0.015]},
}
GAINS_SOURCE = {"imrclab": "IMRCLab/crazyflie-firmware src/modules/src/controller/controller_lee.c defaults",
                "bitcraze": "bitcraze/crazyflie-firmware src/modules/src/controller/controller_lee.c defaults"}


def reference(traj: Trajectory, smooth_s: float = 0.06) -> dict:
    """The flown path as the controller's setpoint: pos, vel [n, 3] as logged; acc, jerk [n, 3] the
    derivatives of the smoothed velocity; yaw [n] of the logged body x axis."""
    step = float(np.median(np.diff(traj.t_s)))
    d1, window = _smoother(step, smooth_s, deriv=1)
    d2, _ = _smoother(step, smooth_s, deriv=2)
    q = traj.quat_wxyz
    w, x, y, z = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    return {"pos": traj.pos_enu_m, "vel": traj.vel_enu_m_s,
            "acc": _per_segment(d1, traj.vel_enu_m_s, traj.segment, window),
            "jerk": _per_segment(d2, traj.vel_enu_m_s, traj.segment, window),
            "yaw": np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))}


def quat_to_rot(q: np.ndarray) -> np.ndarray:
    """[n, 4] w, x, y, z (body -> world) to [n, 3, 3]."""
    w, x, y, z = (q / np.linalg.norm(q, axis=1, keepdims=True)).T
    return np.stack([np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
                     np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
                     np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1)], 1)


class LeeController:
    """controller_lee.c for n drones at once (numpy): thrust (N) and body torques (N m) from the state.
    The omega-desired-dot term of the IMRCLab version (snap feed-forward) is left out: the
    reference here has no snap worth the name."""

    def __init__(self, n: int, gains: dict, mass_kg: float, inertia_kg_m2, dt_s: float):
        self.g = {k: np.asarray(v, float) for k, v in gains.items()}
        self.mass, self.J, self.dt = float(mass_kg), np.asarray(inertia_kg_m2, float), float(dt_s)
        self.i_pos, self.i_att = np.zeros((n, 3)), np.zeros((n, 3))

    def __call__(self, pos, vel, quat, omega, ref: dict) -> tuple[np.ndarray, np.ndarray]:
        g, R = self.g, quat_to_rot(quat)
        e_p, e_v = ref["pos"] - pos, ref["vel"] - vel
        self.i_pos += self.dt * e_p
        f_d = ref["acc"] + [0.0, 0.0, GRAVITY_M_S2] + g["kd"] * e_v + g["kp"] * e_p + g["ki"] * self.i_pos
        thrust = self.mass * np.einsum("ni,ni->n", f_d, R[:, :, 2])
        z_d = f_d / np.linalg.norm(f_d, axis=1, keepdims=True)
        x_c = np.stack([np.cos(ref["yaw"]), np.sin(ref["yaw"]), np.zeros(len(pos))], -1)
        y_d = np.cross(z_d, x_c)
        y_d /= np.linalg.norm(y_d, axis=1, keepdims=True)
        x_d = np.cross(y_d, z_d)
        R_d = np.stack([x_d, y_d, z_d], -1)                         # columns
        e_rm = np.einsum("nji,njk->nik", R_d, R) - np.einsum("nji,njk->nik", R, R_d)
        e_r = 0.5 * np.stack([e_rm[:, 2, 1], e_rm[:, 0, 2], e_rm[:, 1, 0]], -1)
        jerk = ref["jerk"]
        h_w = (self.mass / np.maximum(thrust, 1e-6))[:, None] * (jerk - np.einsum("ni,ni->n", z_d, jerk)[:, None] * z_d)
        omega_des = np.stack([-np.einsum("ni,ni->n", h_w, y_d), np.einsum("ni,ni->n", h_w, x_d), np.zeros(len(pos))], -1)
        omega_r = np.einsum("nji,njk,nk->ni", R, R_d, omega_des)    # R^T R_d omega_des
        self.i_att += self.dt * e_r
        torque = (-g["kr"] * e_r - g["kw"] * (omega - omega_r) - g["ki_att"] * self.i_att
                  + np.cross(omega, self.J * omega))
        return thrust, torque


def mix(env, thrust_n: np.ndarray, torque_nm: np.ndarray) -> np.ndarray:
    """The sim's inverse: thrust and torques -> per-motor thrust (X mixer, the sim's geometry and
    km / kf) -> rotor speed -> throttle through the sim's own throttle curve and battery scale.
    Returns actions [n, 4] in [-1, 1] (motor mode)."""
    d = env.core.drone
    kf, km = d["nom_kf"][0].astype(float), d["nom_km"][0].astype(float)
    arm = d["arm_m"][0].astype(float) / math.sqrt(2.0)
    w_min, w_max = d["nom_omega_min"][0].astype(float), d["nom_omega_max"][0].astype(float)
    scale = d["omega_scale"][0].astype(float)
    tx, ty, tz = torque_nm.T
    t_m = (0.25 * thrust_n[:, None] + 0.25 * (MOTOR_MY * tx[:, None] - MOTOR_MX * ty[:, None]) / arm[:, None]
           - 0.25 * MOTOR_SPIN * tz[:, None] / (km / kf)[:, None])
    t_m = np.clip(t_m, (kf * w_min ** 2)[:, None], (kf * w_max ** 2)[:, None])
    omega = np.sqrt(t_m / kf[:, None]) / scale[:, None]
    curve = d["nom_curve"][:, 0].astype(float)
    return np.clip(2.0 * omega_to_throttle(curve, omega) - 1.0, -1.0, 1.0)


def lee_replay(traj: Trajectory, profile: Profile, mass_kg: float | None = None, gains: str = "imrclab",
               every_s: float = 0.5, horizons_s=HORIZONS_S, smooth_s: float = 0.06,
               held_out_from_s: float | None = None) -> tuple[dict, dict]:
    """Closed-loop replay windows (see the module doc). Returns (metrics, series): per horizon the
    median attitude error (deg), position error (m), the sim's collective command over the logged
    one (bias, share) and the per-motor command RMSE (share of the logged mean), with the
    number of windows; `held_out_from_s` splits the windows for profiles fitted on a flight's start."""
    if gains not in LEE_GAINS:
        raise CompareError(f"unknown gain set {gains!r}; one of {sorted(LEE_GAINS)}")
    prof = flight_profile(profile, mass_kg)
    if not all(traj.has(k) for k in ("pos_enu_m", "vel_enu_m_s", "quat_wxyz", "omega_flu_rad_s")):
        raise CompareError(f"{traj.source}: the controller-in-the-loop replay needs position, velocity, attitude and "
                           "gyro (the controller's inputs) in the log")
    ref = reference(traj, smooth_s)
    logged, _mode, _source = _commands(traj, prof)
    step = float(np.median(np.diff(traj.t_s)))
    steps = {h: max(1, int(round(h / step))) for h in horizons_s}
    longest = max(steps.values())
    ref_ok = np.all(np.isfinite(np.hstack([ref["pos"], ref["vel"], ref["acc"], ref["jerk"], traj.quat_wxyz,
                                           traj.omega_flu_rad_s])), axis=1)
    start_ok = ref_ok & off_ground(traj) & np.all(np.isfinite(logged), axis=1)
    stride = max(1, int(round(every_s / step)))
    starts = np.array([i for i in range(0, traj.n - steps[min(horizons_s)], stride) if start_ok[i]], int)
    if not len(starts):
        raise CompareError(f"{traj.source}: no stretch of {min(horizons_s)} s in the air with the controller's inputs "
                           f"and a reference ({int((~off_ground(traj)).sum())} of {traj.n} samples on the ground)")
    n = len(starts)
    env = sim_env(prof, n, 1.0 / step, "motor")
    rotor = traj.rotor_rad_s[starts] if traj.has("rotor_rad_s") else np.full((n, 4), np.nan)
    hover = math.sqrt(prof.params["mass_kg"] * GRAVITY_M_S2 / (4 * prof.params["kf_n_per_rad2s2"]))
    rotor = np.where(np.isfinite(rotor), rotor, hover)
    _place(env, np.arange(n), {"pos_enu_m": traj.pos_enu_m[starts], "vel_enu_m_s": traj.vel_enu_m_s[starts],
                               "quat_wxyz": traj.quat_wxyz[starts], "omega_flu_rad_s": traj.omega_flu_rad_s[starts],
                               "rotor_rad_s": rotor}, logged[starts], _battery_frac(traj, prof)[starts])
    ctrl = LeeController(n, LEE_GAINS[gains], prof.params["mass_kg"], prof.params["inertia_kg_m2"], step)
    d = env.core.drone
    valid = np.ones(n, bool)
    att = np.full((longest + 1, n), np.nan)
    pos_err = np.full((longest + 1, n), np.nan)
    cmd_sim = np.full((longest, n, 4), np.nan)
    att[0], pos_err[0] = 0.0, 0.0
    for k in range(longest):
        j = np.minimum(starts + k, traj.n - 1)
        valid &= (starts + k < traj.n) & (traj.segment[j] == traj.segment[starts]) & ref_ok[j]
        r = {key: np.nan_to_num(v[j]) for key, v in ref.items()}
        s = {key: d[key].T.astype(float) for key in ("pos_enu_m", "vel_enu_m_s", "quat_wxyz", "omega_flu_rad_s")}
        thrust, torque = ctrl(s["pos_enu_m"], s["vel_enu_m_s"], s["quat_wxyz"], s["omega_flu_rad_s"], r)
        action = mix(env, thrust, torque)
        cmd_sim[k] = np.where(valid[:, None], action, np.nan)
        env.step_physics(action.astype(np.float32))
        j1 = np.minimum(starts + k + 1, traj.n - 1)
        ok = valid & (starts + k + 1 < traj.n)
        att[k + 1] = np.where(ok, _attitude_error_deg(d["quat_wxyz"].T.astype(float), traj.quat_wxyz[j1]), np.nan)
        pos_err[k + 1] = np.where(ok, np.linalg.norm(d["pos_enu_m"].T - traj.pos_enu_m[j1], axis=1), np.nan)
    t_start = traj.t_s[starts]
    metrics = {"profile": profile.name, "gains": gains, "gains_source": GAINS_SOURCE[gains],
               "reference": f"the flown path (logged position and velocity, acceleration and jerk from the smoothed "
                            f"velocity over {smooth_s:g} s); the logs hold no setpoints",
               "control_hz": 1.0 / step, "every_s": stride * step,
               **_horizon_stats(steps, att, pos_err, cmd_sim, logged, starts, np.ones(n, bool))}
    if held_out_from_s is not None:
        metrics["held_out"] = {"from_s": held_out_from_s,
                               **_horizon_stats(steps, att, pos_err, cmd_sim, logged, starts, t_start >= held_out_from_s)}
    series = {"starts": starts, "t_start_s": t_start, "step_s": step, "attitude_error_deg": att,
              "position_error_m": pos_err, "command_sim": cmd_sim}
    return metrics, series


def _horizon_stats(steps, att, pos_err, cmd_sim, logged, starts, chosen) -> dict:
    out = {"windows": {}, "attitude_error_deg": {}, "attitude_error_deg_p90": {}, "error_m": {},
           "command_bias": {}, "command_rmse": {}}
    u_real = (logged + 1.0) / 2.0
    for h, s in steps.items():
        key = f"{h:g}"
        ok = chosen & np.isfinite(att[s])
        out["windows"][key] = int(ok.sum())
        if not ok.any():
            for name in list(out)[1:]:
                out[name][key] = None
            continue
        out["attitude_error_deg"][key] = float(np.median(att[s, ok]))
        out["attitude_error_deg_p90"][key] = float(np.percentile(att[s, ok], 90))
        out["error_m"][key] = float(np.median(pos_err[s, ok]))
        idx = (starts[ok][None, :] + np.arange(s)[:, None])                  # [s, windows] log rows flown
        u_sim = (cmd_sim[:s, ok] + 1.0) / 2.0
        u_log = u_real[idx]
        good = np.all(np.isfinite(u_sim) & np.isfinite(u_log), axis=2)
        mean_log = float(np.mean(u_log[good]))
        out["command_bias"][key] = float(np.mean(u_sim[good]) / mean_log - 1.0)
        out["command_rmse"][key] = float(np.sqrt(np.mean((u_sim[good] - u_log[good]) ** 2)) / mean_log)
    return out
