"""`skyloop sim --demo [--task T]`: fly a few randomized drones of different sizes in one space
through a task (hover / go-to, race, orbit, follow, formation, obstacles) and draw it: the space,
its gates, spheres and formation slots, the targets and every drone's path.

The drones are flown by `CascadeController`, a classic cascaded position -> attitude -> body-rate
controller that reads only the observation (the same numbers a policy sees: target, next gate,
nearest obstacles) and commands `ctbr` actions. It doubles as a baseline for trained policies.
"""
from __future__ import annotations

import logging
import os

import numpy as np

from sim.core import GRAVITY_M_S2, OBS_GATES, OBS_OBSTACLES, TASKS, obs_slice
from sim.env import DroneEnv, parse_tasks, task_config

log = logging.getLogger(__name__)

_T, _V, _R, _W, _H, _TV, _G, _O = (obs_slice(n) for n in (
    "target_body", "vel_body_m_s", "rot_body_to_world", "omega_body_rad_s", "hover_action", "target_vel_body_m_s",
    "gates", "obstacles"))


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
        g = GRAVITY_M_S2
        R = obs[:, _R].reshape(-1, 3, 3)                          # body -> world
        t_body = obs[:, _T]
        squash = np.linalg.norm(t_body, axis=1, keepdims=True)  # |d| / (1 + |d|)
        d_world = np.einsum("nij,nj->ni", R, t_body / np.maximum(1.0 - squash, 1e-3))  # metres
        gate = obs[:, _G].reshape(len(obs), OBS_GATES, -1)[:, 0]  # the next gate: aim 1 m beyond its centre
        racing = gate[:, -1:] > 0
        g_sq = np.linalg.norm(gate[:, :3], axis=1, keepdims=True)
        through = np.einsum("nij,nj->ni", R, gate[:, :3] / np.maximum(1.0 - g_sq, 1e-3) + 1.0 * gate[:, 3:6])
        d_world = np.where(racing, through, d_world)
        # the target's own velocity (orbit, follow) is fed forward
        v_world = np.einsum("nij,nj->ni", R, obs[:, _V] - obs[:, _TV])
        # nearest obstacles push the drone away, harder the closer they are
        obstacles = obs[:, _O].reshape(len(obs), OBS_OBSTACLES, -1)
        off = np.einsum("nij,nkj->nki", R, obstacles[..., :3])
        dist = np.maximum(np.linalg.norm(off, axis=2, keepdims=True), 1e-6)
        gap = np.maximum(dist - obstacles[..., 3:4], 0.05)
        push = -(obstacles[..., 4:5] * off / dist * np.clip(1.0 / gap - 1.0 / 1.5, 0.0, 4.0)).sum(axis=1)
        near = np.linalg.norm(d_world, axis=1, keepdims=True) < 1.0   # integrate only near the target
        self.integral = np.clip(self.integral + near * d_world * self.dt, -3.0, 3.0)
        acc = self.kp * np.clip(d_world, -2.0, 2.0) + self.ki * self.integral - self.kd * v_world + 2.0 * push
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


def fly_demo(num_drones: int = 6, profile: str = "size_family", seconds: float = 8.0, seed: int = 3,
             task: str = "hover", course: str | None = None) -> dict:
    """Runs the demo; returns what `plot_demo` draws. Race, formation and obstacles put every drone
    in one space (one course, one formation, one sphere field); the others give each its own."""
    bounds = {"race": [8.0, 8.0, 6.0], "orbit": [6.0, 6.0, 5.0], "follow": [6.0, 6.0, 5.0]}.get(task, [5.0, 5.0, 5.0])
    shared = task in ("race", "formation", "obstacles")
    config = task_config(task_prob=parse_tasks(task), drones_per_space=float(num_drones if shared else 1), bounds_m=bounds,
                         episode_s=seconds + 1.0, ground_start_prob=0.5 if task == "hover" else 0.0,
                         init_tilt_max_rad=0.3, race_time_per_gate_s=max(4.0, seconds))
    env = DroneEnv(num_drones, profile, action_mode="ctbr", seed=seed, task=config,
                   course=course if task == "race" else None)
    obs, _ = env.reset()
    controller = CascadeController(num_drones, env.profile.params["rate_max_rad_s"], env.control_hz)
    steps = int(seconds * env.control_hz)
    pos = np.full((steps + 1, num_drones, 3), np.nan)
    tgt = np.full((steps + 1, num_drones, 3), np.nan)
    pos[0], tgt[0] = env.core.drone["pos_enu_m"].T, env.core.drone["target_enu_m"].T
    arm = env.core.drone["arm_m"][0].copy()
    ended = np.zeros(num_drones, bool)
    outcome = ["flying"] * num_drones
    gates_passed = np.zeros(num_drones, int)
    for k in range(steps):
        obs, _r, term, trunc, info = env.step(controller(obs))
        for j, i in enumerate(info.get("done_index", [])):
            if not ended[i]:
                ep = info["episode"]
                gates_passed[i] = ep["gates"][j]
                outcome[i] = "success" if ep["success"][j] else "crash" if ep["crash"][j] else "time out"
        ended |= term | trunc           # stop drawing a drone whose episode ended (it restarts elsewhere)
        live = ~ended
        pos[k + 1, live] = env.core.drone["pos_enu_m"].T[live]
        tgt[k + 1, live] = env.core.drone["target_enu_m"].T[live]
        gates_passed[live] = env.core.drone["gates_passed"][0, live]
    c = env.core
    return {"t": np.arange(steps + 1) / env.control_hz, "pos": pos, "targets": tgt, "arm": arm, "task": task,
            "bounds": env.task["bounds_m"], "gates": c.gates[0, :c.n_gates[0]].copy(),
            "obstacles": c.obstacles[0, :c.n_obstacles[0]].copy(),
            "slots": c.formation[0].copy() if task == "formation" else np.zeros((0, 3)),
            "outcome": outcome, "gates_passed": gates_passed}


def plot_demo(path: str, demo: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    pos, tgt, arm, bounds = demo["pos"], demo["targets"], demo["arm"], demo["bounds"]
    fig, (top, side) = plt.subplots(1, 2, figsize=(14, 6.5), gridspec_kw={"width_ratios": [1, 1]})
    colors = plt.cm.viridis(np.linspace(0, 0.9, pos.shape[1]))
    views = ((top, (0, 1)), (side, (0, 2)))
    for g in demo["gates"]:          # a gate: its opening (thick) across its normal; an arrow for the way through
        c, n, hw, hh = g[:3], g[3:6], g[6], g[7]
        across = np.array([-n[1], n[0], 0.0])
        for ax, (a, b) in views:
            if b == 1:
                ends = np.array([c - hw * across, c + hw * across])
            else:
                ends = np.array([c - hw * across - [0, 0, hh], c + hw * across + [0, 0, hh]])
                ends = np.array([[min(ends[:, 0]), c[2] - hh], [max(ends[:, 0]), c[2] + hh]])
                ax.add_patch(plt.Rectangle(ends[0], max(ends[1, 0] - ends[0, 0], 0.05), 2 * hh, fill=False,
                                           color="tab:red", lw=2))
                continue
            ax.plot(ends[:, a], ends[:, b], color="tab:red", lw=3, solid_capstyle="butt")
            ax.annotate("", xy=(c[a] + 0.8 * n[a], c[b] + 0.8 * n[b]), xytext=(c[a], c[b]),
                        arrowprops={"arrowstyle": "->", "color": "tab:red"})
    for k, g in enumerate(demo["gates"]):
        top.text(g[0], g[1], f" {k + 1}", color="tab:red", fontsize=9, va="bottom")
    for o in demo["obstacles"]:
        for ax, (a, b) in views:
            ax.add_patch(Circle((o[a], o[b]), o[3], color="0.55", alpha=0.6))
    for s in demo["slots"]:
        for ax, (a, b) in views:
            ax.plot(s[a], s[b], "+", color="tab:orange", ms=7)
    order = np.argsort(arm)
    for rank, i in enumerate(order):
        label = f"arm {arm[i] * 100:.0f} cm: {demo['outcome'][i]}" + (
            f", {demo['gates_passed'][i]} gates" if demo["task"] == "race" else "")
        moving = demo["task"] in ("orbit", "follow")
        for ax, (a, b) in views:
            ax.plot(pos[:, i, a], pos[:, i, b], color=colors[rank], lw=1.5, label=label if ax is top else None)
            ax.plot(pos[0, i, a], pos[0, i, b], "o", color=colors[rank], ms=4 + 20 * arm[i])
            if moving:
                ax.plot(tgt[:, i, a], tgt[:, i, b], ":", color=colors[rank], lw=1)
            elif demo["task"] != "race":
                last = tgt[np.isfinite(tgt[:, i, 0]), i][-1] if np.isfinite(tgt[:, i, 0]).any() else tgt[0, i]
                ax.plot(last[a], last[b], "x", color=colors[rank], ms=10, mew=2)
    top.set(xlabel="east x [m]", ylabel="north y [m]", title="top view", xlim=(-bounds[0], bounds[0]),
            ylim=(-bounds[1], bounds[1]), aspect="equal")
    side.set(xlabel="east x [m]", ylabel="up z [m]", title="side view", xlim=(-bounds[0], bounds[0]),
             ylim=(-0.1, bounds[2]))
    side.axhline(0, color="0.3", lw=1)
    keys = {"hover": "x target", "race": "red: gates (arrow: way through)", "orbit": "dotted: the moving target",
            "follow": "dotted: the moving target", "formation": "+ slots, x each drone's slot",
            "obstacles": "grey: spheres, x goal"}
    top.legend(loc="upper left", fontsize=7, title=f"o start (size ~ arm); {keys[demo['task']]}", title_fontsize=7)
    fig.suptitle(f"Skyloop sim, task {demo['task']}: {pos.shape[1]} randomized drones in one space "
                 f"({demo['t'][-1]:.1f} s, RK4, flown by the cascade baseline)")
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
    parser.add_argument("--task", default="hover", choices=TASKS, help="the task all drones fly")
    parser.add_argument("--course", default=None, help="race a course (built-in name like race7 or hall, or JSON) "
                                                        "instead of a random one")


def run(args) -> int:
    if not args.demo:
        print("nothing to do: use `skyloop sim --demo` (see --help)")
        return 2
    if args.drones < 1:
        raise ValueError("--drones must be at least 1")
    demo = fly_demo(args.drones, args.profile, args.seconds, args.seed, args.task, args.course)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    plot_demo(args.output, demo)
    for i in np.argsort(demo["arm"]):
        extra = f", {demo['gates_passed'][i]} gates" if args.task == "race" else ""
        seen = np.flatnonzero(np.isfinite(demo["pos"][:, i, 0]))[-1]      # its last drawn point
        error = np.linalg.norm(demo["pos"][seen, i] - demo["targets"][seen, i])
        print(f"drone {i}: arm {demo['arm'][i] * 100:5.1f} cm  {demo['outcome'][i]}{extra}  "
              f"final distance to target {error:6.3f} m")
    print(f"wrote {args.output}")
    return 0
