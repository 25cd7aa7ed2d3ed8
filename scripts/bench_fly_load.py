"""Benchmark: the control loop's timing with a CPU load beside it (issue 20's "busy laptop").

    .venv/bin/python scripts/bench_fly_load.py [--burners N] [--rounds 1] [--json]

Flies `fly --course hall` (the built-in simulated vehicle, in its own process) twice per round,
side by side: once on the machine as it is, once with N CPU burners running (busy-loop processes,
`stress --cpu N`-like; default: one per core). Prints tick p99, missed 10 ms deadlines and their
share, gates and outcome for each (goal under load: < 1 % missed, p99 < 5 ms). Say what else ran
on the machine when you quote the figures.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile


def _burn(stop) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def fly_once(log_dir: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "skyloop", "fly", "--course", "hall", "--json", "--no-plot",
                          "--log", log_dir], capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": out.stderr.strip().splitlines()[-1:] or [f"exit {out.returncode}"]}
    s = json.loads(lines[-1])
    s["missed_share"] = s["missed_ticks"] / max(s["ticks"], 1)
    return s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--burners", type=int, default=os.cpu_count() or 2, help="busy-loop processes beside it")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="one JSON object with every run")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.rounds):
            for loaded in (False, True):
                stop = multiprocessing.Event()
                burners = [multiprocessing.Process(target=_burn, args=(stop,), daemon=True)
                           for _ in range(args.burners if loaded else 0)]
                for b in burners:
                    b.start()
                try:
                    print(f"round {k + 1}: {'with' if loaded else 'without'} {args.burners} CPU burners ...",
                          file=sys.stderr, flush=True)
                    s = fly_once(os.path.join(tmp, f"{k}-{int(loaded)}"))
                finally:
                    stop.set()
                    for b in burners:
                        b.join(5)
                runs.append({"round": k + 1, "burners": len(burners), **s})
    if args.json:
        print(json.dumps({"load_avg": os.getloadavg(), "runs": runs}))
        return 0
    print(f"{'burners':>7} {'gates':>6} {'tick p99 ms':>11} {'missed':>7} {'ticks':>6} {'share':>7}  outcome")
    for r in runs:
        if "error" in r:
            print(f"{r['burners']:>7}  error: {r['error']}")
            continue
        print(f"{r['burners']:>7} {r['gates_passed']:>3}/{r['gates_total']:<2} {r['tick_p99_ms']:>11.2f} "
              f"{r['missed_ticks']:>7} {r['ticks']:>6} {100 * r['missed_share']:>6.2f}%  "
              f"{r['failsafe'] or 'completed'}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
