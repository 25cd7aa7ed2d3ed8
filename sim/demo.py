"""`skyloop sim --demo`: fly a few randomized drones of different sizes to their targets and draw it.

With no trained policy yet, the drones are flown by `CascadeController`, a classic cascaded
position -> attitude -> body-rate controller that reads only the observation (the same numbers a
policy sees) and commands `ctbr` actions. It doubles as a baseline for trained policies.
"""
from __future__ import annotations

import logging
import os

import numpy as np

from sim.core import obs_slice
from sim.env import DroneEnv

log = logging.getLogger(__name__)

_T, _V, _R, _W, _H = (obs_slice(n) for n in ("target_body", "vel_body_m_s", "rot_body_to_world", "omega_body_rad_s",
                                             "hover_action"))


class CascadeController:
    """ctbr actions that fly each drone to its target, from observations alone: PID on position
    (the integral finds the randomized drone's true hover thrust), attitude from the desired
    acceleration, body rates from the attitude error."""

    def __init__(self, num_drones: int, rate_max_rad_s, control_hz: float, kp: float = 3.0, ki: float = 1.5,
                 kd: float = 3.0, k_att: float = 4.0, tilt_max_rad: float = 0.6):
        self.rate_max = np.asarray(rate_max_rad_s, dtype=np.float64)
        self.dt = 1.0 / control_hz
        self.kp, self.ki, self.kd, self.k_att, self.tilt_max = kp, ki, kd, k_att, tilt_max_rad
        self.integral = np.zeros((num_drones, 3))

    def reset(self, mask) -> None:
        self.integral[mask] = 0.0

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        g = 9.80665
        R = obs[:, _R].reshape(-1, 3, 3)                          # body -> world
        t_body = obs[:, _T]
        squash = np.linalg.norm(t_body, axis=1, keepdims=True)  # |d| / (1 + |d|)
        d_world = np.einsum("nij,nj->ni", R, t_body / np.maximum(1.0 - squash, 1e-3))  # metres
        v_world = np.einsum("nij,nj->ni", R, obs[:, _V])
        near = np.linalg.norm(d_world, axis=1, keepdims=True) < 1.0   # integrate only near the target
        self.integral = np.clip(self.integral + near * d_world * self.dt, -3.0, 3.0)
        acc = self.kp * np.clip(d_world, -2.0, 2.0) + self.ki * self.integral - self.kd * v_world
        horiz = np.linalg.norm(acc[:, :2], axis=1, keepdims=True)  # tilt limit
        acc[:, :2] *= np.minimum(1.0, g * np.tan(self.tilt_max) / np.maximum(horiz, 1e-9))
        acc[:, 2] = np.clip(acc[:, 2], -0.5 * g, g) + g
        z_des = acc / np.linalg.norm(acc, axis=1, keepdims=True)
        z_body = R[:, :, 2]
        hover_frac = (obs[:, _H][:, 0] + 1.0) / 2.0              # thrust fraction that hovers
        thrust_frac = hover_frac * np.einsum("ni,ni->n", acc, z_body) / g
        err_body = np.einsum("nji,nj->ni", R, np.cross(z_body, z_des))  # attitude error, body frame
        rates = self.k_att * err_body
        rates[:, 2] = -0.5 * obs[:, _W][:, 2]                    # no yaw: damp the yaw rate
        actions = np.empty((obs.shape[0], 4), dtype=np.float32)
        actions[:, 0] = 2.0 * np.clip(thrust_frac, 0.0, 1.0) - 1.0
        actions[:, 1:] = np.clip(rates / self.rate_max, -1.0, 1.0)
        return actions


def fly_demo(num_drones: int = 6, profile: str = "size_family", seconds: float = 8.0, seed: int = 3):
    """Runs the demo; returns (time [T], positions [T, N, 3], targets [N, 3], arm_m [N], success [N])."""
    env = DroneEnv(num_drones, profile, action_mode="ctbr", seed=seed,
                   task={"episode_s": seconds + 1.0, "ground_start_prob": 0.5, "init_tilt_max_rad": 0.3})
    obs, _ = env.reset()
    controller = CascadeController(num_drones, env.profile.params["rate_max_rad_s"], env.control_hz)
    steps = int(seconds * env.control_hz)
    pos = np.empty((steps + 1, num_drones, 3))
    pos[0] = env.core.drone["pos_enu_m"].T
    targets = env.core.drone["target_enu_m"].T.copy()
    arm = env.core.drone["arm_m"][0].copy()
    for k in range(steps):
        obs, _r, term, trunc, info = env.step(controller(obs))
        pos[k + 1] = env.core.drone["pos_enu_m"].T
        if (term | trunc).any():
            pos[k + 1:, term | trunc] = np.nan  # stop drawing a drone whose episode ended
    success = np.linalg.norm(pos[-1] - targets, axis=1) < env.task["success_radius_m"] * 3
    t = np.arange(steps + 1) / env.control_hz
    return t, pos, targets, arm, success


def plot_demo(path: str, t, pos, targets, arm, bounds) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, side) = plt.subplots(1, 2, figsize=(13, 6))
    colors = plt.cm.viridis(np.linspace(0, 0.9, pos.shape[1]))
    order = np.argsort(arm)
    for rank, i in enumerate(order):
        label = f"arm {arm[i] * 100:.0f} cm"
        for ax, (a, b) in ((top, (0, 1)), (side, (0, 2))):
            ax.plot(pos[:, i, a], pos[:, i, b], color=colors[rank], lw=1.5, label=label if ax is top else None)
            ax.plot(pos[0, i, a], pos[0, i, b], "o", color=colors[rank], ms=4 + 20 * arm[i])
            ax.plot(targets[i, a], targets[i, b], "x", color=colors[rank], ms=10, mew=2)
    top.set(xlabel="east x [m]", ylabel="north y [m]", title="top view", xlim=(-bounds[0], bounds[0]),
            ylim=(-bounds[1], bounds[1]), aspect="equal")
    side.set(xlabel="east x [m]", ylabel="up z [m]", title="side view", xlim=(-bounds[0], bounds[0]),
             ylim=(-0.1, bounds[2]))
    side.axhline(0, color="0.3", lw=1)
    top.legend(loc="upper left", fontsize=8, title="o start (size ~ arm), x target")
    fig.suptitle(f"Skyloop sim: {pos.shape[1]} randomized drones fly to their targets ({t[-1]:.1f} s, RK4)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_arguments(parser) -> None:
    parser.add_argument("--demo", action="store_true", help="fly the demo and write a picture")
    parser.add_argument("-o", "--output", default="sim_demo.png", help="PNG file to write")
    parser.add_argument("--drones", type=int, default=6, help="number of drones")
    parser.add_argument("--profile", default="size_family", help="drone profile: built-in name or JSON path")
    parser.add_argument("--seconds", type=float, default=8.0, help="flight time")
    parser.add_argument("--seed", type=int, default=3, help="random seed (drones, starts, targets)")


def run(args) -> int:
    if not args.demo:
        print("nothing to do: use `skyloop sim --demo` (see --help)")
        return 2
    if args.drones < 1:
        raise ValueError("--drones must be at least 1")
    t, pos, targets, arm, success = fly_demo(args.drones, args.profile, args.seconds, args.seed)
    from sim.env import DEFAULT_TASK
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    plot_demo(args.output, t, pos, targets, arm, DEFAULT_TASK["bounds_m"])
    for i in np.argsort(arm):
        err = np.linalg.norm(pos[-1, i] - targets[i])
        print(f"drone {i}: arm {arm[i] * 100:5.1f} cm  final distance to target {err:6.3f} m")
    print(f"wrote {args.output}")
    return 0
