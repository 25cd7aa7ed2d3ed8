"""A saved flight prepared for the flight view's replay page (`skyloop view LOG`): the flight, its
open-loop sim replay from every start (compare's `replay`, so the page shows the same figures
`compare` reports) and the position error of each window at 0.1 / 0.5 / 1 s, JSON-ready.
"""
from __future__ import annotations

import logging
import math
import os

import numpy as np

from calibration.compare import replay
from calibration.flightlogs import FlightLogError, read_flight_log
from flight.course import Course, parse_course
from sim.profiles import load_profile
from skyloop import frames

log = logging.getLogger(__name__)


def _finite_list(values) -> list:
    return [float(v) if math.isfinite(v) else None for v in np.asarray(values, float).reshape(-1)]


def replay_data(traj, profile, every_s: float = 0.5, max_rate_hz: float = 50.0) -> dict:
    """The flight (decimated to at most max_rate_hz), the open-loop sim replay from every start
    (`every_s` apart) and its error at each horizon, JSON-ready."""
    metrics, series = replay(traj, profile, every_s=every_s)
    step = float(np.median(np.diff(traj.t_s)))
    stride = max(1, int(round(1.0 / (max_rate_hz * step))))
    idx = np.arange(0, traj.n, stride)
    yaw = [frames.quat_to_euler_rpy(q)[2] if np.all(np.isfinite(q)) else float("nan") for q in traj.quat_wxyz[idx]]
    pos_sim = series["pos_sim"]                          # [steps + 1, windows, 3]
    windows = []
    for w, start in enumerate(series["starts"]):
        path = pos_sim[::max(1, stride), w]
        windows.append({"t_s": float(traj.t_s[start]), "path_enu_m": [_finite_list(p) for p in path],
                        "dt_s": float(step * max(1, stride)),
                        "error_m": {h: (None if not math.isfinite(e[w]) else float(e[w]))
                                    for h, e in series["per_window"].items()}})
    return {"source": os.path.basename(traj.source), "format": traj.log_format,
            "t_s": [float(t) for t in traj.t_s[idx]], "pos_enu_m": [_finite_list(p) for p in traj.pos_enu_m[idx]],
            "yaw_enu_rad": [float(y) if math.isfinite(y) else None for y in yaw],
            "mode": [traj.mode[i] for i in idx] if traj.mode is not None else None,
            "windows": windows, "metrics": metrics}


def bounds_for(course: Course | None, pos_enu_m: np.ndarray) -> tuple[list, list]:
    """The box to draw: the course's geofence, or the flown path with a margin."""
    if course is not None:
        return course.bounds_min_enu_m.tolist(), course.bounds_max_enu_m.tolist()
    ok = pos_enu_m[np.all(np.isfinite(pos_enu_m), axis=1)]
    lo, hi = (ok.min(0), ok.max(0)) if len(ok) else (np.zeros(3), np.ones(3))
    return (np.minimum(lo - 1.0, [np.inf, np.inf, 0.0])).tolist(), (hi + 1.0).tolist()


def load_replay(log_path: str, profile_name: str | None = None, mapping: str | None = None, every_s: float = 0.5):
    """(the page's replay data, the course or None, a status function for the server) for a saved flight log."""
    try:
        traj = read_flight_log(log_path, mapping)
    except FlightLogError as exc:
        if exc.partial is None:
            raise
        log.warning("%s; showing the %d samples before the break", exc, exc.partial.n)
        traj = exc.partial
    name = profile_name or traj.meta.get("profile")
    if not name:
        raise ValueError(f"{log_path}: the log names no drone profile: give --profile (e.g. --profile my_quad.json)")
    course = parse_course(traj.meta["course"], f"{log_path} sidecar") if "course" in traj.meta else None
    data = replay_data(traj, load_profile(name), every_s)
    lo, hi = bounds_for(course, traj.pos_enu_m)
    data.update(bounds_min_enu_m=lo, bounds_max_enu_m=hi)
    status = {"bounds_min_enu_m": lo, "bounds_max_enu_m": hi, "mode": "replay", "armed": False}
    return data, course, (lambda: dict(status))
