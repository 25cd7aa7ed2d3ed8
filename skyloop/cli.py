"""`skyloop <verb>`: one command line for the whole toolkit.

Each verb lives in the package that owns it and provides `add_arguments(parser)` and
`run(args) -> int`; a verb that composes parts of different layers (fly, then draw its picture)
lives in skyloop/verbs/. Verbs are imported only when used, so `skyloop --help` is instant and the
flight path never imports plotting or training code. This module and skyloop/verbs/ are the top
layer: nothing imports them (tests/test_layering.py).
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import sys

from skyloop.helpformat import HelpFormatter

#: verb -> (module, one-line help)
VERBS = {
    "sim": ("sim.demo", "run drones in the simulator and draw their flights (--demo)"),
    "bench": ("skyloop.verbs.bench", "benchmarks that print figures (bench sim / train / policy)"),
    "train": ("sim.train", "train a policy with PPO on the randomized sim (one file: sim/train.py)"),
    "eval": ("sim.evaluate", "evaluate a policy on fresh randomized drones"),
    "sweep": ("sim.sweep", "tune the trainer's hyperparameters on Ray Tune (here, or a cluster with --address)"),
    "export": ("policy_export.cli", "export a trained policy to ONNX (or C) with its contract; --inspect a model"),
    "sitl": ("flight.sitl", "a simulated MAVLink quadrotor on our sim (ArduPilot- or PX4-like)"),
    "fly": ("skyloop.verbs.fly", "fly a course with an exported policy (the simulated vehicle unless --connect)"),
    "teleop": ("skyloop.verbs.teleop", "fly to a target dragged on a web page (fly --teleop; prints the page's URL)"),
    "stand": ("thrust_stand.cli", "drive a motor on a thrust stand and record it (stand run / stand import)"),
    "calibrate": ("calibration.cli", "fit motor constants from stand logs into a drone profile"),
    "compare": ("calibration.compare_cli", "replay a real flight log in the sim and report where they differ"),
    "view": ("skyloop.verbs.view", "replay a saved flight on a local web page: the drone, the course, the sim's prediction"),
}


def _usage() -> str:
    width = max(len(v) for v in VERBS)
    rows = "\n".join(f"  {verb:<{width}}  {text}" for verb, (_m, text) in VERBS.items())
    return f"usage: skyloop <verb> [options]\n\nverbs:\n{rows}\n\n`skyloop <verb> --help` for a verb's options."


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    verb = argv[0]
    if verb not in VERBS:
        print(f"skyloop: unknown verb {verb!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, text = VERBS[verb]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"skyloop {verb}", description=text,
                                     formatter_class=HelpFormatter)
    module.add_arguments(parser)
    takes_extra = len(inspect.signature(module.run).parameters) == 2  # e.g. train's --train.FIELD VALUE
    if takes_extra:
        args, extra = parser.parse_known_args(argv[1:])
    else:
        args, extra = parser.parse_args(argv[1:]), None
    try:
        return int((module.run(args, extra) if takes_extra else module.run(args)) or 0)
    except (ValueError, OSError) as exc:  # our typed errors derive from these; they carry the fix
        print(f"skyloop {verb}: error: {exc}", file=sys.stderr)
        return 1
    except (RecursionError, OverflowError, MemoryError) as exc:  # input too deep or too large for any check
        print(f"skyloop {verb}: error: the input is too large or too deeply nested "
              f"({type(exc).__name__}: {str(exc)[:120]})", file=sys.stderr)
        return 1


def fly_main(argv: list[str] | None = None) -> int:
    """The `fly` command: the same as `skyloop fly`."""
    return main(["fly"] + list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
