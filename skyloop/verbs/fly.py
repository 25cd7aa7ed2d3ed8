"""`skyloop fly` / `fly`: fly a course (flight/cli.py), then draw the flight's picture
(calibration/flight_plot.py) unless --no-plot. The flight path never imports plotting code: the
picture is drawn here, after the vehicle is down."""
from __future__ import annotations

import os

from flight.cli import add_arguments, fly, report  # noqa: F401  (add_arguments: the verb's options)


def run(args) -> int:
    flown = fly(args)
    if isinstance(flown, int):
        return flown
    summary = flown.result.summary()
    if not args.no_plot:
        from calibration.flight_plot import plot_flight
        summary["picture"] = plot_flight(flown.log_path, os.path.splitext(flown.log_path)[0] + ".png", flown.course)
    return report(args, flown, summary)
