"""Benchmark: does the flight view cost the control loop anything? And do idle WebSockets?

    .venv/bin/python scripts/bench_view.py [--rounds 2] [--json]

Flies the same short course with the shipped policy on the simulated vehicle, in rounds of three
side by side (so a busy machine loads all three alike):
  none  — no view, no server;
  view  — the flight view (server, ghost process) with 2 pages reading the state;
  flood — the view and 200 idle WebSocket connection attempts (the cap lets 8 in, refuses the rest).
The clients run in a process of their own (as a browser does); the flight at fly's priority.
Prints each case's tick p99 / mean and missed ticks, and the p99 ratios to `none` (goal: within 10 %).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import sys
import threading

import numpy as np

from flight.cli import _free_udp_port, default_policy
from flight.connection import parse_connection
from flight.course import parse_course
from flight.link import MavLink
from flight.runner import fly_course
from flight.sitl import SitlVehicle
from flight.page_server import PageServer
from flight.realtime import raised_priority
from flight.teleop import vehicle_status
from flight.view import FlightView
from policy_export import load_policy
from sim.profiles import load_profile

COURSE = {"format": "skyloop.course/1", "name": "bench-view",
          "bounds_m": {"min": [-4.0, -4.0, 0.0], "max": [12.0, 4.0, 4.0]},
          "start": {"pos_enu_m": [0.0, 0.0, 0.0], "yaw_deg": 0.0}, "laps": 1,
          "gates": [{"centre_enu_m": [3.0, 0.0, 1.5], "yaw_deg": 0.0, "inner_size_m": 1.5},
                    {"centre_enu_m": [7.0, 1.0, 1.5], "yaw_deg": 0.0, "inner_size_m": 1.5},
                    {"centre_enu_m": [10.0, -1.0, 1.8], "yaw_deg": 0.0, "inner_size_m": 1.5}]}


class Quiet:
    def show(self, *a, **k):
        pass

    def done(self):
        pass


def _clients(url: str, readers: int, idle: int, stop) -> None:
    """A process of their own (as a browser is): `readers` clients that read every state (like open
    pages), then `idle` connection attempts that never read (the cap refuses those beyond it)."""
    from websockets.sync.client import connect

    from flight.realtime import lower_priority
    lower_priority(0)                                    # started by the real-time flight: normal, as a browser

    def read():
        with contextlib.suppress(Exception), connect(url) as ws:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    ws.recv(timeout=0.2)
    for _ in range(readers):
        threading.Thread(target=read, daemon=True).start()
    held = []
    for _ in range(idle):
        with contextlib.suppress(Exception):
            held.append(connect(url, open_timeout=2))
    stop.wait()


def fly_once(case: str, tmp: str) -> dict:
    course = parse_course(COURSE)
    profile, port = load_profile("crazyflie21"), _free_udp_port()
    policy_path = default_policy("ctbr")
    policy = load_policy(policy_path, action_modes=("ctbr",))
    rate_max = policy.metadata["action_scaling"].get("rate_max_rad_s", profile.params["rate_max_rad_s"])
    with contextlib.ExitStack() as stack:
        stack.enter_context(raised_priority())           # as fly does (flight/realtime.py)
        stack.enter_context(SitlVehicle(profile, f"udpout:127.0.0.1:{port}", "ardupilot", course.start_pos_enu_m))
        link = stack.enter_context(MavLink(parse_connection(f"udpin:127.0.0.1:{port}"), "ardupilot", "ctbr", rate_max))
        view = None
        if case != "none":
            view = stack.enter_context(FlightView.for_flight(policy_path, policy, profile, course))
            server = stack.enter_context(PageServer(None, lambda: vehicle_status(link, course), port=0, view=view))
            ctx = multiprocessing.get_context("spawn")
            stop = ctx.Event()
            clients = ctx.Process(target=_clients, daemon=True,
                                  args=(f"ws://127.0.0.1:{server.port}/ws", 2, 200 if case == "flood" else 0, stop))
            clients.start()
            stack.callback(clients.join, 5.0)
            stack.callback(stop.set)
        result = fly_course(link, policy, course, profile, f"{tmp}/{case}.csv", status=Quiet(), max_time_s=30,
                            view=view)
        ms = np.array([float(r) for r in _tick_ms(f"{tmp}/{case}.csv")])
        ms = ms[np.isfinite(ms)]                      # the landing rows have no tick time
    return {"case": case, "tick_p99_ms": float(np.percentile(ms, 99)), "tick_mean_ms": float(ms.mean()),
            "missed_ticks": result.missed_ticks, "ticks": result.ticks, "failsafe": result.failsafe,
            "predictions": view.predictions if view is not None else None}


def _tick_ms(path: str):
    from skyloop.rowlog import read_row_log
    data, _meta = read_row_log(path)
    return data["tick_ms"]


def main(argv=None) -> int:
    import tempfile
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for case in ("none", "view", "flood"):
                runs.append(fly_once(case, tmp))
                print(f"round {r + 1} {case}: " + json.dumps(runs[-1]), file=sys.stderr, flush=True)
    out = {}
    for case in ("none", "view", "flood"):
        rs = [x for x in runs if x["case"] == case]
        out[case] = {"tick_p99_ms": float(np.median([x["tick_p99_ms"] for x in rs])),
                     "tick_mean_ms": float(np.median([x["tick_mean_ms"] for x in rs])),
                     "missed_ticks": int(sum(x["missed_ticks"] for x in rs)), "ticks": int(sum(x["ticks"] for x in rs))}
    for case in ("view", "flood"):
        out[case]["p99_ratio_to_none"] = out[case]["tick_p99_ms"] / out["none"]["tick_p99_ms"]
    if args.json:
        print(json.dumps(out))
    else:
        for case, v in out.items():
            ratio = f", p99 x{v['p99_ratio_to_none']:.2f} of none" if "p99_ratio_to_none" in v else ""
            print(f"{case:>5}: tick p99 {v['tick_p99_ms']:.3f} ms, mean {v['tick_mean_ms']:.3f} ms, "
                  f"missed {v['missed_ticks']} of {v['ticks']}{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
