"""The flight view: what the sim thinks, next to what the drone does.

    fly --course hall --view          # live: prints the page's URL on a line of its own
    skyloop view flights/hall-....csv # replay a saved flight (ours, or any log `compare` reads)

The page (flight/teleop_page/, served by flight/page_server.py, all local) draws the course
(geofence, gates), the drone and its trail, the target, and the ghost: the sim started from the
current state with the same policy in the loop, flying the next second (flight/ghost.py). Beside
it: the ghost's prediction error at 0.1 / 0.5 / 1 s (each measured once that time has passed),
tick timing, link latency, mode, battery and failsafe.

`FlightView` is the live side. The control loop calls `publish(...)` once a tick: an append to a
bounded deque, nothing else (no lock, no wait, no I/O). One thread of the view ("flight-view",
`period_s` apart) takes the new ticks, hands the newest to the ghost process when it is free
(at most `ghost_hz` a second), collects its predictions and scores them against the ticks that
followed. The server asks `snapshot()` for the figures.

`ReplayView` is the replay side: the flight, its open-loop sim replay and the per-horizon errors
(prepared by calibration/replay_view.py with compare's `replay`: the same figures `compare`
reports), sent to the page at once; the page's time slider does the rest.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections import deque

import numpy as np

from flight.course import Course, races
from flight.service import Service, Worker

log = logging.getLogger(__name__)
HORIZONS_S = (0.1, 0.5, 1.0)
TICK_WINDOW = 1000                     # tick timing figures over the last this many ticks
HISTORY_S = 3.0                        # positions kept to score predictions (longer than the horizon)


def _finite_list(values) -> list | None:
    if values is None:
        return None
    return [float(v) if math.isfinite(v) else None for v in np.asarray(values, float).reshape(-1)]


def display_likely(environ=os.environ, stdout=sys.stdout) -> bool:
    """Whether someone is likely to open a browser here: a desktop session, not CI, not a headless box."""
    if environ.get("CI") or environ.get("SKYLOOP_NO_VIEW"):
        return False
    if sys.platform in ("darwin", "win32"):
        return bool(getattr(stdout, "isatty", lambda: False)())
    return bool(environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"))


class FlightView(Service):
    """The live flight's figures for the page; see the module's docstring."""

    def __init__(self, course: Course, *, ghost=None, control_hz: float = 100.0, ghost_hz: float = 10.0,
                 period_s: float = 0.04, horizons_s=HORIZONS_S):
        self.course, self.ghost, self.control_hz = course, ghost, float(control_hz)
        self.ghost_hz, self.period_s, self.horizons_s = ghost_hz, period_s, tuple(horizons_s)
        self._ticks: deque = deque(maxlen=4096)          # the control loop appends; the view thread pops
        self._hist_t: deque = deque()                    # (t_s, pos) of recent ticks, for scoring
        self._hist_pos: deque = deque()
        self._tick_ms: deque = deque(maxlen=TICK_WINDOW)
        self._pending: list = []                         # predictions not yet scored at every horizon
        self._errors = {h: deque(maxlen=2000) for h in self.horizons_s}
        self._last_request_s = -1e9
        self._latest: dict | None = None                 # the newest tick, as published
        self._ghost_path: np.ndarray | None = None
        self._ghost_t_s: float | None = None
        self.predictions = 0
        self.failsafe: str | None = None
        self._lock = threading.Lock()                    # between the view thread and snapshot()
        self._worker = Worker(self._run, "flight-view")
        self._stop = self._worker.stop_event

    @classmethod
    def for_flight(cls, policy_path: str, policy, profile, course: Course, *, lookahead_m: float = 1.5,
                   race: bool | None = None, **kwargs) -> "FlightView":
        """A view with its ghost process for this policy, drone and course (started by start())."""
        from flight.ghost import GhostProcess
        race = races(policy) if race is None else race
        ghost = GhostProcess(policy_path, profile, course, policy.action_mode, lookahead_m=lookahead_m, race=race)
        return cls(course, ghost=ghost, control_hz=policy.control_hz, **kwargs)

    # ------------------------------------------------------------ the control loop's side
    def publish(self, t_s: float, state: dict, target, last_actions, tick_ms: float, missed: int, progress,
                battery_v: float | None = None) -> None:
        """One control tick (the state the policy saw, its target and its last actions before this
        tick's, the battery voltage the vehicle reports). Costs an append; never waits."""
        goal = getattr(progress, "goal_enu_m", None)
        climb_to = getattr(progress, "climb_to_enu_m", None) if getattr(progress, "climbing", False) else None
        start = {"t_s": t_s, "state": state, "target_enu_m": np.asarray(target, float), "last_actions": last_actions,
                 "next_gate": getattr(progress, "next_gate", None), "goal_enu_m": None if goal is None else
                 np.array(goal, float), "speed_m_s": getattr(progress, "speed_m_s", None),
                 "climb_to_enu_m": None if climb_to is None else np.array(climb_to, float), "battery_v": battery_v}
        self._ticks.append((t_s, state["pos_enu_m"], tick_ms, missed, start))

    def finish(self, failsafe: str | None) -> None:
        self.failsafe = failsafe or "completed"

    # ------------------------------------------------------------ its own thread
    def start(self) -> None:
        if self.ghost is not None:
            self.ghost.start()
        self._worker.start()

    def stop(self) -> None:
        self._worker.stop()
        if self.ghost is not None:
            self.ghost.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.step()
            except Exception:                  # a bug here must not end the view silently
                log.exception("flight view: step failed")

    def step(self) -> None:
        """Takes the new ticks, collects and scores predictions, asks for a new one (the thread's work)."""
        newest = None
        while self._ticks:
            tick = self._ticks.popleft()
            newest = tick
            self._hist_t.append(tick[0])
            self._hist_pos.append(np.asarray(tick[1], float))
            self._tick_ms.append(tick[2])
        while self._hist_t and newest is not None and self._hist_t[0] < newest[0] - HISTORY_S:
            self._hist_t.popleft()
            self._hist_pos.popleft()
        if self.ghost is not None:
            result = self.ghost.poll()
            if result is not None and "path_enu_m" in result:
                with self._lock:
                    self._ghost_path, self._ghost_t_s = result["path_enu_m"], result["t_s"]
                    self.predictions += 1
                self._pending.append((result["t_s"], result["path_enu_m"], set()))
            now = time.monotonic()
            if newest is not None and now - self._last_request_s >= 1.0 / self.ghost_hz:
                if self.ghost.request(newest[4]):
                    self._last_request_s = now
        self._score()
        if newest is not None:
            with self._lock:
                self._latest = {"t_s": newest[0], "target_enu_m": newest[4]["target_enu_m"], "missed": newest[3]}

    def _score(self) -> None:
        """Each prediction, once the flight has passed t0 + h: |ghost - drone| at t0 + h."""
        if len(self._hist_t) < 2:
            return
        t = np.fromiter(self._hist_t, float)
        pos = np.array(self._hist_pos)
        keep = []
        for t0, path, done in self._pending:
            for h in self.horizons_s:
                if h in done or t[-1] < t0 + h:
                    continue
                done.add(h)
                when = t0 + h
                if when < t[0]:
                    continue
                actual = np.array([np.interp(when, t, pos[:, a]) for a in range(3)])
                k = h * self.control_hz
                lo = min(int(math.floor(k)), len(path) - 1)
                hi = min(lo + 1, len(path) - 1)
                predicted = path[lo] + (path[hi] - path[lo]) * (k - lo)
                self._errors[h].append(float(np.linalg.norm(predicted - actual)))
            if len(done) < len(self.horizons_s):
                keep.append((t0, path, done))
        self._pending = keep

    # ------------------------------------------------------------ the page's side
    def errors(self) -> dict:
        """Per horizon: the newest error, the median and the count so far [m]."""
        out = {}
        for h, values in self._errors.items():
            v = np.array(values, float)
            out[f"{h:g}"] = {"last_m": float(v[-1]) if len(v) else None,
                             "median_m": float(np.median(v)) if len(v) else None,
                             "p90_m": float(np.percentile(v, 90)) if len(v) else None, "n": int(len(v))}
        return out

    def snapshot(self) -> dict:
        with self._lock:
            latest, path, t_ghost = self._latest, self._ghost_path, self._ghost_t_s
        ms = np.array(self._tick_ms, float)
        out = {"view": "live", "errors": self.errors(), "predictions": self.predictions,
               "ghost_enu_m": None if path is None else [_finite_list(p) for p in path[::2]],
               "ghost_t_s": t_ghost, "ghost_error": getattr(self.ghost, "error", None),
               "tick_ms": {"p99": float(np.percentile(ms, 99)) if len(ms) else None,
                           "mean": float(ms.mean()) if len(ms) else None, "last": float(ms[-1]) if len(ms) else None},
               "flight_failsafe": self.failsafe}
        if latest is not None:
            out.update(flight_t_s=latest["t_s"], missed_ticks=latest["missed"],
                       target_enu_m=_finite_list(latest["target_enu_m"]))
        return out

    def hello(self) -> list:
        return [{"type": "course", "course": self.course.to_json(), "horizons_s": list(self.horizons_s)}]


# ---------------------------------------------------------------- replay: skyloop view LOG

class ReplayView:
    """A saved flight for the page: sent whole to each new page, with the course and the sim replay."""

    def __init__(self, data: dict, course: Course | None):
        self.data, self.course = data, course

    def snapshot(self) -> dict:
        return {"view": "replay"}

    def hello(self) -> list:
        course = self.course.to_json() if self.course is not None else None
        return [{"type": "course", "course": course, "horizons_s": list(HORIZONS_S)},
                {"type": "replay", **self.data}]
