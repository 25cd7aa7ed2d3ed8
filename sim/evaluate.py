"""Evaluate a policy on fresh randomized drones: `skyloop eval POLICY --episodes N`.

Every drone flies exactly one episode (N drones in parallel, in chunks), so short crashed
episodes are not over-counted the way "the first N episodes to finish" would be. Actions are the
policy's deterministic output (what is exported and flown). The drones are drawn from the
checkpoint's own profile and randomization unless `--profile` names another, with a seed
different from training's, so these are drones the policy has never seen.

    skyloop eval flight/policies/default.pt --episodes 2000
    skyloop eval policy.pt --json
    skyloop eval policy.pt --plot eval.png --profile crazyflie21
    skyloop eval policy.pt --tasks all --episodes 2000 --json        # per task, and per task by drone size
    skyloop eval policy.pt --tasks race --course race7 --laps 3 --profile fpv5 --nominal --json

With `--course`, every race flies that course (its gates, box and laps, `--laps` overriding) and the
race summary adds `race_time_s` (the finishing time over all laps: best and median of the drones
that finished) and `finish_rate`.
"""
from __future__ import annotations

import json
import logging
import sys

import numpy as np

from sim.core import CRASH_CAUSES, TASKS, SimError
from sim.env import EPISODE_FIELDS, DroneEnv, parse_tasks, task_config
from sim.profiles import Profile, load_profile, parse_profile

log = logging.getLogger(__name__)

#: drone-size buckets by arm length (centre to motor), upper bounds in metres
SIZE_BUCKETS = (("micro (arm < 6 cm)", 0.06), ("small (6-12 cm)", 0.12), ("medium (12-20 cm)", 0.20),
                ("large (arm >= 20 cm)", float("inf")))
EVAL_SEED = 1_000_003          # not the training seed (0 by default): fresh drones
MAX_PARALLEL = 4096
PLOT_DRONES = 24


def size_bucket(arm_m: float) -> str:
    return next(name for name, upper in SIZE_BUCKETS if arm_m < upper)


def summarize(episodes: dict) -> dict:
    """Success, crash, time to target and final error of a set of episodes (arrays of EPISODE_FIELDS)."""
    n = len(episodes["success"])
    if n == 0:
        return {"episodes": 0}
    success = episodes["success"].astype(bool)
    return {
        "episodes": n,
        "success_rate": float(success.mean()),
        "crash_rate": float(episodes["crash"].astype(bool).mean()),
        "mean_time_to_target_s": float(episodes["time_to_target_s"][success].mean()) if success.any() else None,
        "mean_final_error_m": float(episodes["final_error_m"].mean()),
        "median_final_error_m": float(np.median(episodes["final_error_m"])),
        "mean_return": float(episodes["return"].mean()),
    }


def _act_fn(policy):
    """A function obs (N, OBS) float32 -> actions (N, 4), plus a reset hook for recurrent state."""
    if callable(policy) and not hasattr(policy, "initial_state"):
        return policy, lambda n: None, lambda idx: None
    import torch
    state = {"h": None}

    def reset(n):
        state["h"] = policy.initial_state(n)

    def clear(idx):
        if state["h"] is not None:
            state["h"][torch.as_tensor(idx)] = 0.0

    def act(obs):
        with torch.no_grad():
            a, state["h"] = policy(torch.as_tensor(obs), state["h"])
        return a.numpy()
    return act, reset, clear


def summarize_task(name: str, episodes: dict, by_size: bool = True) -> dict:
    """summarize() plus what a task adds: collisions, and what ended the crashes (crash_causes: the share
    of episodes per cause, sim.core.CRASH_CAUSES; they sum to crash_rate); for races, gates per minute,
    gates passed and race time; with `by_size`, the same per drone-size bucket under "per_size"."""
    out = summarize(episodes)
    if out["episodes"] == 0:
        return out
    out["collision_rate"] = float(episodes["collision"].astype(bool).mean())
    causes = np.bincount(episodes["crash_cause"].astype(int), minlength=len(CRASH_CAUSES)) / out["episodes"]
    out["crash_causes"] = {c: float(f) for c, f in zip(CRASH_CAUSES[1:], causes[1:]) if f > 0}   # share of episodes
    if name == "race":
        out["gates_per_min"] = float(episodes["gates"].sum() / max(episodes["length_s"].sum(), 1e-9) * 60.0)
        out["mean_gates_passed"] = float(episodes["gates"].mean())
        done = episodes["success"].astype(bool)
        out["mean_race_time_s"] = float(episodes["time_to_target_s"][done].mean()) if done.any() else None
    if by_size:
        buckets = np.array([size_bucket(a) for a in episodes["arm_m"]])
        out["per_size"] = {b: summarize_task(name, {k: v[buckets == b] for k, v in episodes.items()}, False)
                           for b, _ in SIZE_BUCKETS if (buckets == b).any()}
    return out


def course_summary(race: dict, finish_times_s: np.ndarray, course) -> dict:
    """What a fixed course adds to the race summary: its name, laps, gates to pass, the finish rate and
    the finishing time over all laps (best and median of the finishers; None when nobody finished)."""
    done = len(finish_times_s) > 0
    return {"course": course.name, "laps": course.laps, "gates_to_pass": len(course.gates) * course.laps,
            "finish_rate": race["success_rate"],
            "race_time_s": float(np.min(finish_times_s)) if done else None,
            "median_race_time_s": float(np.median(finish_times_s)) if done else None}


def evaluate(policy, profile: str | Profile | dict, action_mode: str, episodes: int = 1000, task: dict | None = None,
             seed: int = EVAL_SEED, randomize: bool = True, record: int = 0, course=None,
             laps: int | None = None) -> dict:
    """Runs `episodes` drones for one episode each. `policy` is a trained `sim.policy.Policy` or
    any function obs -> actions. Returns the summary (overall, per task with its own per size bucket,
    per size bucket) and, if `record` > 0, the trajectories of the first `record` drones under
    "trajectories". `course` (a skyloop.course.Course or name / path) makes every race fly it, `laps`
    times (default: the course's); the race summary then has "course" (see course_summary)."""
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    if laps is not None and course is None:
        raise ValueError("laps needs a course (e.g. --course race7 --laps 3)")
    if course is not None:
        from dataclasses import replace

        from skyloop.course import Course, load_course
        course = course if isinstance(course, Course) else load_course(course)
        if laps is not None:
            if laps < 1:
                raise ValueError(f"laps must be at least 1, got {laps}")
            course = replace(course, laps=int(laps))
    if isinstance(profile, dict):
        profile = parse_profile(profile, "<checkpoint profile>")
    act, reset_state, clear_state = _act_fn(policy)
    collected = {k: [] for k in EPISODE_FIELDS}
    trajectories = []
    done_total = 0
    for chunk_start in range(0, episodes, MAX_PARALLEL):
        n = min(MAX_PARALLEL, episodes - chunk_start)
        env = DroneEnv(n, profile, action_mode=action_mode, task=task_config(**(task or {})), randomize=randomize,
                       seed=seed + chunk_start, course=course)
        obs, _ = env.reset(seed=seed + chunk_start)
        reset_state(n)
        finished = np.zeros(n, bool)
        rows = {k: np.zeros(n) for k in EPISODE_FIELDS}
        keep = min(record - len(trajectories), n) if record else 0
        pos, tgt = [], []
        max_steps = int(env.core.drone["episode_s"].max() * env.control_hz) + 2   # races last longer
        for _ in range(max_steps):
            if keep:
                pos.append(env.core.drone["pos_enu_m"][:, :keep].T.copy())
                tgt.append(env.core.drone["target_enu_m"][:, :keep].T.copy())
            obs, _r, _term, _trunc, info = env.step(np.asarray(act(obs), dtype=np.float32))
            if "episode" in info:
                idx = info["done_index"]
                first = ~finished[idx]
                for k in EPISODE_FIELDS:
                    rows[k][idx[first]] = info["episode"][k][first]
                finished[idx] = True
                clear_state(idx)
            if finished.all():
                break
        if not finished.all():
            raise RuntimeError(f"{(~finished).sum()} drones did not finish an episode in {max_steps} steps")
        for k in EPISODE_FIELDS:
            collected[k].append(rows[k])
        if keep:
            p, t = np.stack(pos, 1), np.stack(tgt, 1)                # (keep, steps, 3)
            for i in range(keep):
                length = int(round(rows["length_s"][i] * env.control_hz))
                trajectories.append({"pos_enu_m": p[i, :length + 1], "target_enu_m": t[i, 0],
                                     "arm_m": float(rows["arm_m"][i]), "success": bool(rows["success"][i]),
                                     "crash": bool(rows["crash"][i]),
                                     "dt_s": 1.0 / env.control_hz})
        done_total += n
        log.debug("evaluated %d / %d drones", done_total, episodes)
    eps = {k: np.concatenate(v) for k, v in collected.items()}
    result = summarize(eps)
    result["per_task"] = {name: summarize_task(name, {k: v[eps["task"] == t] for k, v in eps.items()})
                          for t, name in enumerate(TASKS) if (eps["task"] == t).any()}
    if course is not None and "race" in result["per_task"]:
        race = eps["task"] == TASKS.index("race")
        finished = race & eps["success"].astype(bool)
        result["per_task"]["race"]["course"] = course_summary(result["per_task"]["race"],
                                                              eps["time_to_target_s"][finished], course)
    buckets = np.array([size_bucket(a) for a in eps["arm_m"]])
    result["per_size"] = {name: summarize({k: v[buckets == name] for k, v in eps.items()})
                          for name, _ in SIZE_BUCKETS if (buckets == name).any()}
    if record:
        result["trajectories"] = trajectories
    return result


def plot_trajectories(trajectories: list[dict], path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import cm, colors

    norm = colors.LogNorm(0.03, 0.35)
    fig, (ax_side, ax_dist) = plt.subplots(1, 2, figsize=(12, 5))
    for tr in trajectories:
        rel = tr["pos_enu_m"] - tr["target_enu_m"]
        colour = cm.viridis(norm(tr["arm_m"]))
        style = ":" if tr["crash"] else "-"
        ax_side.plot(np.hypot(rel[:, 0], rel[:, 1]), rel[:, 2], style, color=colour, lw=1)
        ax_side.plot(*([np.hypot(*rel[0, :2])], [rel[0, 2]]), "o", color=colour, ms=3)
        t = np.arange(len(rel)) * tr["dt_s"]
        ax_dist.plot(t, np.linalg.norm(rel, axis=1), style, color=colour, lw=1)
    ax_side.plot([0], [0], "r*", ms=14, label="target")
    ax_side.set(xlabel="horizontal distance to target [m]", ylabel="height relative to target [m]",
                title="paths (start: dot; dotted: crashed)")
    ax_side.legend()
    ax_dist.set(xlabel="time [s]", ylabel="distance to target [m]", yscale="log", title="distance to target")
    ax_dist.axhline(0.1, color="r", lw=0.8, ls="--")
    fig.colorbar(cm.ScalarMappable(norm, "viridis"), ax=ax_dist, label="arm length [m]")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_table(result: dict) -> str:
    def pct(x):
        return f"{100 * x:5.1f} %"

    def ttt(x):
        return f"{x:5.2f} s" if x is not None else "    -  "
    lines = [f"{'':22} {'episodes':>8} {'success':>8} {'crash':>8} {'to target':>9} {'final err':>9}"]
    rows = [("all", result)] + [(f"task {k}", v) for k, v in result["per_task"].items()] + \
        [(k, v) for k, v in result["per_size"].items()]
    for name, r in rows:
        lines.append(f"{name:22} {r['episodes']:8d} {pct(r['success_rate']):>8} {pct(r['crash_rate']):>8} "
                     f"{ttt(r['mean_time_to_target_s']):>9} {r['median_final_error_m']:7.3f} m"
                     + (f"  collisions {pct(r['collision_rate'])}" if "collision_rate" in r else "")
                     + (f"  {r['gates_per_min']:.1f} gates/min" if "gates_per_min" in r else ""))
    for name, r in result["per_task"].items():
        if r.get("crash_causes"):
            lines.append(f"task {name} crashes: " + ", ".join(f"{c.replace('_', ' ')} {pct(f).strip()}"
                                                           for c, f in r["crash_causes"].items()))
    race = result["per_task"].get("race", {})
    if "course" in race:
        c = race["course"]
        t = f"{c['race_time_s']:.2f} s (median {c['median_race_time_s']:.2f} s)" if c["race_time_s"] else "not finished"
        lines.append(f"course {c['course']}, {c['laps']} laps ({c['gates_to_pass']} gates): finished "
                     f"{pct(c['finish_rate'])}, race time {t}, mean gates passed {race['mean_gates_passed']:.1f}")
    return "\n".join(lines)


def parse_task_settings(settings: list[str]) -> dict:
    """`FIELD=VALUE` strings (VALUE in JSON) as task fields; raises SimError naming the bad one."""
    out = {}
    for item in settings:
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = json.loads(value)
        except ValueError:
            raise SimError(f"--set {item!r}: write FIELD=VALUE with a JSON value, e.g. obstacle_spread_m=1.4 "
                           "or gate_count_range=[3,6]") from None
    task_config(**out)                     # unknown fields say so here (values out of range: when flown)
    return out


def add_arguments(parser) -> None:
    parser.add_argument("policy", help="trained policy checkpoint (.pt from `skyloop train`)")
    parser.add_argument("--episodes", type=int, default=1000, help="drones to fly, one episode each")
    parser.add_argument("--profile", default=None,
                        help="drone profile (name or JSON) to draw drones from (default: the one trained on)")
    parser.add_argument("--nominal", action="store_true", help="fly the profile's nominal drone, no randomization")
    parser.add_argument("--seed", type=int, default=EVAL_SEED, help="seed of the drawn drones")
    parser.add_argument("--tasks", default=None,
                        help="task mix to fly, e.g. 'all' or 'hover:3,race:1' (default: the one trained on)")
    parser.add_argument("--course", default=None,
                        help="fly every race on this course (a name in skyloop/courses, e.g. race7, or a JSON path)")
    parser.add_argument("--laps", type=int, default=None, help="laps of --course (default: the course's own)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="fly a task field at this value (JSON) instead of the one trained on, e.g. "
                             "--set obstacle_spread_m=1.4 (repeatable; fields: sim.env.DEFAULT_TASK)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--plot", metavar="PNG", default=None, help="write a picture of some trajectories")


def run(args) -> int:
    from sim.policy import load_checkpoint
    policy, ckpt = load_checkpoint(args.policy)
    profile = load_profile(args.profile) if args.profile else ckpt["profile"]
    task = dict(ckpt["task"], task_prob=parse_tasks(args.tasks)) if args.tasks else ckpt["task"]
    saved_curriculum = (ckpt.get("training_stats") or {}).get("curriculum")
    if saved_curriculum:   # trained with a curriculum: fly the full task, not the stage it stopped at
        from sim.curriculum import Curriculum
        task = Curriculum.from_state(saved_curriculum).full_task(task)
    task.update(parse_task_settings(args.set))
    result = evaluate(policy, profile, ckpt["action_mode"], args.episodes, task, args.seed,
                      randomize=not args.nominal, record=PLOT_DRONES if args.plot else 0,
                      course=args.course, laps=args.laps)
    trajectories = result.pop("trajectories", None)
    if args.plot:
        name = args.profile or ckpt["profile"].get("name", "?")
        plot_trajectories(trajectories, args.plot, f"{args.policy} on {name}: success "
                          f"{100 * result['success_rate']:.1f} %, crash {100 * result['crash_rate']:.1f} %")
    if args.json:
        print(json.dumps(result))
    else:
        print(format_table(result))
        if args.plot:
            print(f"wrote {args.plot}", file=sys.stderr)
    return 0
