"""`skyloop bench sim | train | policy`: the sim's and the trainer's benchmarks (sim/bench.py) and
the exported policy's (policy_export/bench.py) under one verb. Each prints figures (--json for
one JSON object); scripts/benchmarks.sh runs them side by side."""
from __future__ import annotations

from policy_export import bench as policy_bench
from sim import bench as sim_bench
from skyloop.helpformat import HelpFormatter


def add_arguments(parser) -> None:
    sub = sim_bench.add_arguments(parser)
    policy_bench.add_arguments(sub.add_parser(
        "policy", help="single-observation inference latency of an exported policy (ONNX and C)",
        formatter_class=HelpFormatter))


def run(args, extra: list[str]) -> int:
    if args.what != "policy":
        return sim_bench.run(args, extra)
    if extra:
        raise ValueError(f"bench policy: unknown options {extra}")
    return policy_bench.run(args)
