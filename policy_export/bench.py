"""`skyloop bench policy POLICY.onnx`: single-observation inference latency, p50 / p99.

onnxruntime: the flight runner's path (`load_policy(...).run(obs)`, one intra-op thread), timed
per call in Python. C: the `skyloop export --c` header compiled with -O2, timed per call inside
C. The C export comes from `--c HEADER`, or is generated from the checkpoint beside the ONNX
(POLICY.pt next to POLICY.onnx); without either, the C figures are null.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time

import numpy as np

from policy_export.contract import OnnxPolicy, load_policy

log = logging.getLogger(__name__)

GOALS_US = {"onnx_p99_us": 100.0, "c_p99_us": 10.0}


def _observation(policy: OnnxPolicy) -> np.ndarray:
    """A real first observation of a drone of the policy's own profile."""
    from sim.env import DroneEnv
    from sim.profiles import parse_profile

    meta = policy.metadata
    env = DroneEnv(1, parse_profile(meta["profile"], "the policy's profile"), action_mode=meta["action_mode"],
                   task=meta.get("task"))
    obs, _ = env.reset(seed=0)
    return obs[0].copy()


def _percentiles(ns: np.ndarray) -> tuple[float, float]:
    return float(np.percentile(ns, 50) / 1e3), float(np.percentile(ns, 99) / 1e3)


def time_onnx(policy: OnnxPolicy, obs: np.ndarray, seconds: float = 1.0, warmup: int = 200) -> np.ndarray:
    """Nanoseconds per `policy.run(obs, state)` call, for about `seconds`."""
    state = policy.initial_state()
    for _ in range(warmup):
        _, state = policy.run(obs, state)
    times, clock = [], time.perf_counter_ns
    end = clock() + int(seconds * 1e9)
    while True:
        t0 = clock()
        _, state = policy.run(obs, state)
        t1 = clock()
        times.append(t1 - t0)
        if t1 > end and len(times) >= 1000:
            return np.asarray(times, np.float64)


def _c_header(onnx_path: str, c_header: str | None, workdir: str) -> str | None:
    if c_header:
        return c_header
    checkpoint = os.path.splitext(onnx_path)[0] + ".pt"
    if not os.path.exists(checkpoint):
        log.warning("no C export to time: pass --c policy.h, or keep %s beside %s", os.path.basename(checkpoint),
                    os.path.basename(onnx_path))
        return None
    from policy_export.c_export import export_c

    header = os.path.join(workdir, "policy.h")
    log.info("generating the C export from %s", checkpoint)
    export_c(checkpoint, header)
    return header


def bench_policy(onnx_path: str, c_header: str | None = None, seconds: float = 1.0,
                 c_iterations: int = 20000) -> dict:
    """{"onnx_p50_us", "onnx_p99_us", "c_p50_us", "c_p99_us"} (C figures None without a C export)."""
    from policy_export.c_export import compile_header

    policy = load_policy(onnx_path, threads=1)
    obs = _observation(policy)
    onnx_ns = time_onnx(policy, obs, seconds)
    result = dict(zip(("onnx_p50_us", "onnx_p99_us"), _percentiles(onnx_ns)))
    result.update(c_p50_us=None, c_p99_us=None, onnx_calls=len(onnx_ns), c_calls=0)
    with tempfile.TemporaryDirectory() as tmp:
        header = _c_header(onnx_path, c_header, tmp)
        if header:
            compiled = compile_header(header, tmp)
            compiled.time(obs, 1000)  # warm-up
            c_ns = compiled.time(obs, c_iterations)
            result.update(zip(("c_p50_us", "c_p99_us"), _percentiles(c_ns)), c_calls=c_iterations)
    return result


def format_result(onnx_path: str, result: dict) -> str:
    def row(name, p50, p99, calls):
        if p50 is None:
            return f"  {name:<13} {'-':>9} {'-':>9} {'no C export':>10}"
        return f"  {name:<13} {p50:9.1f} {p99:9.1f} {calls:10d}"

    return "\n".join([
        f"skyloop bench policy: {onnx_path}, one observation per call, one thread",
        f"  {'runtime':<13} {'p50 us':>9} {'p99 us':>9} {'calls':>10}",
        row("onnxruntime", result["onnx_p50_us"], result["onnx_p99_us"], result["onnx_calls"]),
        row("C (-O2)", result["c_p50_us"], result["c_p99_us"], result["c_calls"]),
        f"  goals: onnxruntime p99 <= {GOALS_US['onnx_p99_us']:g} us, C p99 <= {GOALS_US['c_p99_us']:g} us",
    ])


def add_arguments(parser) -> None:
    """`skyloop bench policy`'s options (skyloop/verbs/bench.py puts it beside bench sim / train)."""
    parser.add_argument("policy", help="the exported model (.onnx)")
    parser.add_argument("--c", dest="c_header", help="the C export (.h); default: made from the .pt beside the .onnx")
    parser.add_argument("--seconds", type=float, default=2.0, help="time to measure each runtime")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args) -> int:
    """`skyloop bench policy POLICY.onnx [--c HEADER] [--seconds S] [--json]`."""
    path = args.policy
    if not path:
        raise FileNotFoundError("bench policy needs the exported model: skyloop bench policy POLICY.onnx")
    result = bench_policy(path, args.c_header, min(float(args.seconds), 10.0))
    if args.json:
        print(json.dumps({k: result[k] for k in ("onnx_p50_us", "onnx_p99_us", "c_p50_us", "c_p99_us")}))
    else:
        print(format_result(path, result))
    return 0
