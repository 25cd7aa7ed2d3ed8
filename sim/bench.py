"""Benchmarks that print figures: `skyloop bench sim`, `bench train` and `bench policy`
(the last lives in policy_export/bench.py; skyloop/verbs/bench.py puts the three under one verb).

`bench sim`: simulator throughput on one core. For each number of drones: agent steps per second (one control step of every drone: physics
substeps, rewards, terminations, automatic resets and observations, i.e. the full env step),
RK4 physics substeps per second (as counted by the C kernels while timed, not agent steps times
substeps), and memory per drone (every byte the C side allocated for the environment, shared
spaces, padding and working buffers included, divided by the drones). Drones fly near hover with
small random actions, so episodes end and reset at a realistic rate. The report names what the
core was compiled for (instruction set, vector width), from the compiler's macros at build time.

`bench train`: `skyloop train` with its defaults for a time budget (60 s), a snapshot every few
seconds, each snapshot evaluated deterministically on fresh randomized drones (`sim.evaluate`):
time to 95 % success, final success, training steps/s and where the training time goes.
"""
from __future__ import annotations

import io
import json
import os
import re
import tempfile
import time

import numpy as np

from sim.core import TASKS, build_target
from sim.env import DroneEnv, parse_tasks

#: the shared space the mixed-task row flies: 512 drones, every task, one 40 x 40 x 10 m box
SHARED = {"drones": 512, "bounds_m": [20.0, 20.0, 10.0]}


def bench_sim(drones=(1, 64, 1024, 8192), seconds: float = 2.0, profile: str = "size_family",
              action_mode: str = "motor", report=None, tasks: str = "hover", drones_per_space: int = 1,
              bounds_m=None) -> list[dict]:
    results = []
    for n in drones:
        task = {"task_prob": parse_tasks(tasks), "drones_per_space": float(min(drones_per_space, n))}
        if bounds_m:
            task["bounds_m"] = list(bounds_m)
        env = DroneEnv(n, profile, action_mode=action_mode, task=task)
        env.reset(seed=0)
        rng = np.random.default_rng(0)
        hover = env.core.drone["hover_action"][0]
        base = np.repeat(hover[:, None], 4, axis=1) if action_mode == "motor" else \
            np.stack([hover, np.zeros(n), np.zeros(n), np.zeros(n)], axis=1)
        # a pool of prepared actions, so the timed loop measures the sim, not the random draws
        pool = np.clip(base[None] + 0.05 * rng.standard_normal((16, n, 4)), -1, 1).astype(np.float32)
        core, steps = env.core, 0
        for k in range(20):  # warm-up
            core.actions[:] = pool[k % 16]
            core.step()
        integrated = core.substeps_integrated
        start = time.perf_counter()
        while True:
            for k in range(16):
                core.actions[:] = pool[k]
                core.step()
            steps += 16
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
        integrated = core.substeps_integrated - integrated
        row = {"drones": n, "agent_steps_per_s": steps * n / elapsed, "substeps_per_s": integrated / elapsed,
               "substeps_integrated": integrated, "bytes_allocated": core.bytes_allocated,
               "bytes_per_drone": round(core.bytes_allocated / n),
               "action_mode": action_mode, "physics_dt_s": core.physics_dt_s, "control_dt_s": core.control_dt_s,
               "tasks": tasks, "drones_per_space": int(task["drones_per_space"])}
        results.append(row)
        if report:
            report(row)
    return results


def env_steps_per_s(config, seconds: float = 2.0) -> float:
    """Env-only agent steps/s for a training config: the same drones, action mode and task, the
    same `DroneEnv.step` call the trainer makes, with prepared near-hover actions (no policy)."""
    from sim.env import task_config
    env = DroneEnv(config.num_drones, config.profile, action_mode=config.action_mode,
                   task=task_config(**{"task_prob": parse_tasks(config.tasks), **config.task}), seed=config.seed)
    env.reset(seed=config.seed)
    n = config.num_drones
    hover = env.core.drone["hover_action"][0]
    base = np.repeat(hover[:, None], 4, axis=1) if config.action_mode == "motor" else \
        np.stack([hover, np.zeros(n), np.zeros(n), np.zeros(n)], axis=1)
    pool = np.clip(base[None] + 0.05 * np.random.default_rng(0).standard_normal((16, n, 4)), -1, 1).astype(np.float32)
    steps, start = 0, time.perf_counter()
    while True:
        for k in range(16):
            env.step(pool[k])
        steps += 16
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return steps * n / elapsed


def bench_train(seconds: float = 60.0, snapshot_every_s: float = 5.0, episodes: int = 1000, goal: float = 0.95,
                overrides: list[str] | None = None, report=None, env_seconds: float = 2.0) -> dict:
    """Trains with the defaults (plus `overrides`) for `seconds`, evaluates a snapshot every
    `snapshot_every_s` on `episodes` fresh drones, and measures the env alone in the same process
    (before and after training, averaged, so a change in the machine's load shows in both)."""
    from sim.evaluate import evaluate
    from sim.train import TrainConfig, load_checkpoint, parse_overrides, train

    with tempfile.TemporaryDirectory() as tmp:
        config = parse_overrides(overrides or [], TrainConfig(time_budget_s=seconds, output=os.path.join(tmp, "p.pt"),
                                                              snapshot_every_s=snapshot_every_s, eval_episodes=0))
        env_before = env_steps_per_s(config, env_seconds)
        metrics = train(config, progress_stream=io.StringIO())
        env_after = env_steps_per_s(config, env_seconds)
        snapshots = sorted((float(m.group(1)), os.path.join(tmp, m.group(0))) for m in
                           (re.fullmatch(r"p\.at([0-9.]+)s\.pt", name) for name in os.listdir(tmp)) if m)
        if not snapshots or metrics["elapsed_s"] - snapshots[-1][0] > 0.5:   # the final policy, unless just saved
            snapshots.append((metrics["elapsed_s"], config.output))
        curve = []
        for elapsed, path in snapshots:
            policy, ckpt = load_checkpoint(path)
            r = evaluate(policy, ckpt["profile"], ckpt["action_mode"], episodes, ckpt["task"])
            point = {"elapsed_s": elapsed, "steps": ckpt["training_steps"], "success_rate": r["success_rate"],
                     "crash_rate": r["crash_rate"]}
            curve.append(point)
            if report:
                report(point)
    total = metrics["elapsed_s"]
    env_rate = 0.5 * (env_before + env_after)
    return {"time_to_95_s": next((p["elapsed_s"] for p in curve if p["success_rate"] >= goal), None),
            "final_success": curve[-1]["success_rate"], "steps_per_s": metrics["steps_per_s"],
            "env_steps_per_s": env_rate, "train_over_env": metrics["steps_per_s"] / env_rate,
            "split": {"env": metrics["time_env_s"] / total,
                      "policy": (metrics["time_rollout_s"] - metrics["time_env_s"]) / total,
                      "update": metrics["time_update_s"] / total},
            # for the table, not in --json
            "_detail": {"goal": goal, "curve": curve, "steps": metrics["steps"], "threads": metrics["threads"],
                        "final_crash_rate": curve[-1]["crash_rate"], "env_before": env_before, "env_after": env_after}}


def add_arguments(parser) -> None:
    """The sim and train sub-commands; returns the sub-parsers (skyloop/verbs/bench.py adds `policy`)."""
    from skyloop.helpformat import HelpFormatter as fmt
    sub = parser.add_subparsers(dest="what", required=True, metavar="{sim,train,policy}")
    p = sub.add_parser("sim", help="simulator throughput on one core", formatter_class=fmt)
    p.add_argument("--drones", type=int, nargs="+", default=[1, 64, 1024, 8192], help="batch sizes")
    p.add_argument("--seconds", type=float, default=2.0, help="time per batch size")
    p.add_argument("--profile", default="size_family", help="drone profile")
    p.add_argument("--no-tasks", action="store_true",
                   help="only the hover sweep (skip each task at 1024 drones and the 512-drone shared space, all tasks)")
    p.add_argument("--mode", default="motor", choices=["motor", "ctbr"], help="action mode")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p = sub.add_parser("train", help="train with the defaults; time to 95 %% success, steps/s, time split",
                       formatter_class=fmt,
                       description="Any --train.FIELD VALUE / --task.FIELD VALUE after the options is passed "
                                   "to the trainer.")
    p.add_argument("--seconds", type=float, default=60.0, help="training time budget")
    p.add_argument("--snapshot-every", type=float, default=5.0, help="seconds between evaluated snapshots")
    p.add_argument("--episodes", type=int, default=1000, help="evaluation episodes per snapshot")
    p.add_argument("--env-seconds", type=float, default=2.0,
                   help="seconds of env-only stepping (before and after training) for train_over_env")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: time_to_95_s (null if not reached), final_success, steps_per_s, "
                        "env_steps_per_s, train_over_env, split {env, policy, update}")
    return sub


def run(args, extra: list[str]) -> int:
    if args.what == "train":
        return _run_train(args, extra)
    if extra:
        raise ValueError(f"bench {args.what}: unknown options {extra}")

    def show(row):
        space = "own worlds" if row["drones_per_space"] == 1 else f"{row['drones_per_space']} per space"
        print(f"{row['drones']:>7} drones  {row['tasks']:<9} {space:<14} {row['agent_steps_per_s'] / 1e6:8.2f} M agent-steps/s  "
              f"{row['substeps_per_s'] / 1e6:8.2f} M substeps/s  {row['bytes_per_drone']:6d} B/drone", flush=True)

    target = build_target()
    if not args.json:
        print(f"skyloop bench sim: one core, {args.mode} mode, profile {args.profile}, "
              f"{args.seconds:g} s per row (full env step: physics, tasks, sensing, resets, observations); "
              f"core built for {target['isa']}, {target['lanes']} drones per vector instruction")
    report = None if args.json else show
    results = bench_sim(args.drones, args.seconds, args.profile, args.mode, report=report)
    if not args.no_tasks:
        for task in TASKS[1:]:
            results += bench_sim([1024], args.seconds, args.profile, args.mode, report=report, tasks=task)
        results += bench_sim([SHARED["drones"]], args.seconds, args.profile, args.mode, report=report, tasks="all",
                             drones_per_space=SHARED["drones"], bounds_m=SHARED["bounds_m"])
    if args.json:
        print(json.dumps({"build": target, "results": results}))
    return 0


def _run_train(args, extra) -> int:
    def show(p):
        print(f"  {p['elapsed_s']:5.1f} s  {p['steps'] / 1e6:6.2f} M steps  success {100 * p['success_rate']:5.1f} %  "
              f"crash {100 * p['crash_rate']:5.1f} %", flush=True)

    if not args.json:
        print(f"skyloop bench train: default config, {args.seconds:g} s, snapshots every {args.snapshot_every:g} s, "
              f"each evaluated on {args.episodes} fresh randomized drones", flush=True)
    r = bench_train(args.seconds, args.snapshot_every, args.episodes, overrides=extra,
                    report=None if args.json else show, env_seconds=args.env_seconds)
    detail = r.pop("_detail")
    if args.json:
        print(json.dumps(r))
        return 0
    reached = f"{r['time_to_95_s']:.1f} s" if r["time_to_95_s"] is not None else "not reached"
    split = ", ".join(f"{k} {100 * v:.0f} %" for k, v in r["split"].items())
    print(f"time to 95 % success: {reached}; final success {100 * r['final_success']:.1f} %, "
          f"crash {100 * detail['final_crash_rate']:.1f} %\n{detail['steps'] / 1e6:.1f} M steps, "
          f"{r['steps_per_s'] / 1e3:.0f} k steps/s training ({detail['threads']} torch threads), "
          f"{r['env_steps_per_s'] / 1e3:.0f} k steps/s env alone: train/env {r['train_over_env']:.2f}; "
          f"time split: {split}")
    return 0
