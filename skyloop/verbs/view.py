"""`skyloop view LOG`: a saved flight on the flight view's page (flight/view.py), with a time
slider, the sim replay overlaid and the per-horizon errors (calibration/replay_view.py)."""
from __future__ import annotations

import sys
import time


def add_arguments(parser) -> None:
    parser.add_argument("log", metavar="LOG", help="flight log: our CSV, .ulg, .bin, .tlog, or a CSV with --mapping")
    parser.add_argument("--profile", default=None, help="drone profile for the sim replay (default: the log's)")
    parser.add_argument("--mapping", default=None, help="column mapping for a generic CSV (as for compare)")
    parser.add_argument("--every-s", type=float, default=0.5, help="start a sim replay window this often [s]")
    parser.add_argument("--port", type=int, default=8765, help="the page's port (0: any free one)")
    parser.add_argument("--bind", default="127.0.0.1",
                        help="the page's address; any non-loopback one requires the token printed at start")


def run(args) -> int:
    from calibration.replay_view import load_replay
    from flight.page_server import PageServer
    from flight.view import ReplayView
    print(f"view: reading {args.log} and replaying it in the sim ...", file=sys.stderr, flush=True)
    data, course, status = load_replay(args.log, args.profile, args.mapping, args.every_s)
    with PageServer(None, status, args.bind, args.port, rate_hz=2.0, view=ReplayView(data, course)) as server:
        print("view: open this page (Ctrl-C quits):", file=sys.stderr)
        print(server.url, flush=True)
        try:
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass
    return 0
