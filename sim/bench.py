"""`skyloop bench sim`: simulator throughput on one core.

For each number of drones: agent steps per second (one control step of every drone: physics
substeps, rewards, terminations, automatic resets and observations, i.e. the full env step),
RK4 physics substeps per second, and memory per drone. Drones fly near hover with small random
actions, so episodes end and reset at a realistic rate.
"""
from __future__ import annotations

import json
import time

import numpy as np

from sim.core import bytes_per_drone
from sim.env import DroneEnv


def bench_sim(drones=(1, 64, 1024, 8192), seconds: float = 2.0, profile: str = "size_family",
              action_mode: str = "motor", report=None) -> list[dict]:
    results = []
    for n in drones:
        env = DroneEnv(n, profile, action_mode=action_mode)
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
        start = time.perf_counter()
        while True:
            for k in range(16):
                core.actions[:] = pool[k]
                core.step()
            steps += 16
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
        row = {"drones": n, "agent_steps_per_s": steps * n / elapsed,
               "substeps_per_s": steps * n * core.substeps / elapsed, "bytes_per_drone": bytes_per_drone(),
               "action_mode": action_mode, "physics_dt_s": core.physics_dt_s, "control_dt_s": core.control_dt_s}
        results.append(row)
        if report:
            report(row)
    return results


def add_arguments(parser) -> None:
    parser.add_argument("what", choices=["sim"], help="what to benchmark")
    parser.add_argument("--drones", type=int, nargs="+", default=[1, 64, 1024, 8192], help="batch sizes")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per batch size")
    parser.add_argument("--profile", default="size_family", help="drone profile")
    parser.add_argument("--mode", default="motor", choices=["motor", "ctbr"], help="action mode")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args) -> int:
    def show(row):
        print(f"{row['drones']:>7} drones  {row['agent_steps_per_s'] / 1e6:8.2f} M agent-steps/s  "
              f"{row['substeps_per_s'] / 1e6:8.2f} M substeps/s  {row['bytes_per_drone']:6d} B/drone", flush=True)

    if not args.json:
        print(f"skyloop bench sim: one core, {args.mode} mode, profile {args.profile}, "
              f"{args.seconds:g} s per size (full env step: physics, rewards, resets, observations)")
    results = bench_sim(args.drones, args.seconds, args.profile, args.mode, report=None if args.json else show)
    if args.json:
        print(json.dumps({"results": results}))
    return 0
