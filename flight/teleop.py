"""Drag-the-target teleop: a person drags the policy's target on a web page; the policy flies to it.

    fly --teleop                      # the simulated vehicle; prints the page's URL on a line of its own
    fly --teleop --connect udpin:0.0.0.0:14550 --profile my_quad.json --course lab.json

The runner serves the page and one WebSocket on http://127.0.0.1:8765 (flight/page_server.py,
in a process of its own, so the control loop never waits for it; the same server shows the flight
view, flight/view.py). Bound to any other address, the state and every command need the token
printed at start (the URL holds it). The page gets the vehicle's state 25 times a second.

`TeleopTargets` is the target source `fly_course` reads each control tick (flight/runner.py), in
place of a course's sliding target: every goal the page sets is clamped into the geofence box less
a margin, and the target the policy flies to moves towards that goal no faster than `speed_m_s`,
so a drag across the room is a walk, not a jump. The same safety supervisor stays in charge. With
no page (tab closed, or silent for `page_timeout_s`) the target holds where it is; after
`land_after_s` more the flight ends with a failsafe and the vehicle lands. Every target change (a
drag, a key, hold, take-off, page lost) is recorded in the flight log (`goal_enu_m_*`,
`target_event`).
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque

import numpy as np

from flight.course import Course
from sim.core import GATE_FLOATS
from skyloop import frames

log = logging.getLogger(__name__)
DEFAULT_BOX_MIN_ENU_M, DEFAULT_BOX_MAX_ENU_M = (-5.0, -5.0, 0.0), (5.0, 5.0, 3.5)


class TeleopError(ValueError):
    """A teleop setting that cannot work; the message says what to change."""


def default_box_course(start_pos_enu_m=(0.0, 0.0, 0.0)) -> Course:
    """The geofence when no course is given: 10 x 10 x 3.5 m (ENU, x and y from -5 to 5 m, z up to
    3.5 m) in the vehicle's local frame, i.e. around where its estimator started."""
    return Course("teleop-box", np.array(DEFAULT_BOX_MIN_ENU_M), np.array(DEFAULT_BOX_MAX_ENU_M),
                  np.asarray(start_pos_enu_m, float), 0.0, (), 1)


def _finite(value) -> float | None:
    """A number for JSON (which has no NaN: the page would reject the whole message), or None."""
    return float(value) if value is not None and math.isfinite(value) else None


def _finite_list(values) -> list | None:
    return None if values is None else [_finite(v) for v in np.asarray(values, float)]


class TeleopTargets:
    """The operator's target, read by fly_course each tick through the same small interface as
    flight/course.py's CourseProgress (update(pos, t) -> target, finished, passes, next_gate,
    total_gates), plus `failsafe`, `log_fields()` and `stopped(reason)`. The page's commands arrive
    from the server's threads through `command(...)`; everything is guarded by one lock."""

    next_gate = total_gates = 0
    race = False                                   # the operator's target: no gates in the observation

    def next_gates(self, count: int) -> np.ndarray:
        return np.zeros((0, GATE_FLOATS), np.float32)

    def __init__(self, course: Course, *, margin_m: float = 1.0, min_height_m: float = 0.5,
                 takeoff_height_m: float = 1.0, speed_m_s: float = 1.0, page_timeout_s: float = 1.0,
                 land_after_s: float = 10.0, clock=time.monotonic):
        lo, hi = course.bounds_min_enu_m, course.bounds_max_enu_m
        self.goal_min_enu_m = lo + np.array([margin_m, margin_m, min_height_m])
        self.goal_max_enu_m = hi - margin_m
        if np.any(self.goal_min_enu_m > self.goal_max_enu_m):
            raise TeleopError(f"the geofence box {lo.tolist()} .. {hi.tolist()} m leaves no room for targets "
                              f"{margin_m:g} m from its walls and ceiling: use a larger course box")
        if not (speed_m_s > 0 and page_timeout_s > 0 and land_after_s >= 0):
            raise TeleopError("the target speed and the page timeout must be positive, land-after not negative")
        self.speed_m_s, self.page_timeout_s, self.land_after_s = speed_m_s, page_timeout_s, land_after_s
        self.clock = clock
        self.passes: list = []
        self.finished = False                      # the operator pressed Land
        self.failsafe: str | None = None           # kill, or the page lost for too long
        self.phase = "ready"                       # ready -> taking off -> flying -> landing -> ended
        self.stop_reason: str | None = None        # why the flight loop ended
        self.takeoff = threading.Event()           # set by Take off (or Kill, to stop waiting)
        self.on_kill = None                        # called in its own thread: disarm at once
        self.goal_enu_m = self.clamp(np.asarray(course.start_pos_enu_m, float) + [0.0, 0.0, takeoff_height_m])
        self.target_enu_m: np.ndarray | None = None   # what the policy flies to (rate limited)
        self._last_t_s: float | None = None
        self._pages = 0                            # open pages that have sent an accepted command
        self._page_seen_s: float | None = None
        self._hold_since_s: float | None = None
        self._events: deque = deque(maxlen=200)    # target changes since the last flight-log row
        self._lock = threading.Lock()

    def clamp(self, pos_enu_m) -> np.ndarray:
        return np.clip(np.asarray(pos_enu_m, float), self.goal_min_enu_m, self.goal_max_enu_m)

    # ------------------------------------------------------------ the control loop's side
    def update(self, pos_enu_m, t_s: float) -> np.ndarray:
        """Moves the target towards the goal (at most speed_m_s) and returns it; holds without a page."""
        with self._lock:
            if self.target_enu_m is None:
                self.target_enu_m = np.asarray(pos_enu_m, float).copy()      # no jump at take-off
                self.phase = "flying"
            self._watch_page(self.clock())
            step_m = self.speed_m_s * (0.0 if self._last_t_s is None else max(0.0, t_s - self._last_t_s))
            self._last_t_s = t_s
            gap = self.goal_enu_m - self.target_enu_m
            dist = float(np.linalg.norm(gap))
            self.target_enu_m = self.goal_enu_m.copy() if dist <= step_m else self.target_enu_m + gap * (step_m / dist)
            return self.target_enu_m.copy()

    def _watch_page(self, now: float) -> None:
        silent = self._pages == 0 or self._page_seen_s is None or now - self._page_seen_s > self.page_timeout_s
        if silent and self._hold_since_s is None:
            self._hold_since_s = now
            self.goal_enu_m = self.target_enu_m.copy()
            self._event("page lost: hold", self.goal_enu_m)
            log.warning("teleop: no page; holding the target, landing in %.0f s unless a page returns",
                        self.land_after_s)
        elif not silent and self._hold_since_s is not None:
            self._hold_since_s = None
            self._event("page back", self.goal_enu_m)
        if self._hold_since_s is not None and now - self._hold_since_s >= self.land_after_s and self.failsafe is None:
            self.failsafe = (f"teleop page lost: no page for {self.land_after_s:g} s after holding the target "
                             f"(page timeout {self.page_timeout_s:g} s): landing")

    def log_fields(self) -> dict:
        """This tick's extra flight-log columns: the goal, and every target change since the last row."""
        with self._lock:
            events = "; ".join(self._events)
            self._events.clear()
            return {**dict(zip(("goal_enu_m_x", "goal_enu_m_y", "goal_enu_m_z"), self.goal_enu_m.tolist())),
                    "target_event": events}

    def stopped(self, reason: str | None) -> None:
        with self._lock:
            self.phase = "landing"
            self.stop_reason = reason or "land pressed on the teleop page"

    def _event(self, what: str, pos_enu_m) -> None:
        self._events.append(f"{what} {' '.join(f'{v:.3f}' for v in pos_enu_m)}")

    # ------------------------------------------------------------ the page's side
    def page_opened(self) -> None:
        with self._lock:
            self._pages += 1

    def page_closed(self) -> None:
        with self._lock:
            self._pages -= 1

    def command(self, cmd: str, pos_enu_m=None, via: str = "page") -> dict:
        """One command from a page (already authorized): goto, takeoff, hold, land, kill or ping.
        Returns the reply: ok, and the (clamped) goal or the reason it was refused."""
        kill = None
        with self._lock:
            self._page_seen_s = self.clock()
            error = self._apply(cmd, pos_enu_m, via)
            if error is None and cmd == "kill":
                kill = self.on_kill
            reply = {"ok": error is None, "cmd": cmd, "goal_enu_m": self.goal_enu_m.tolist(), "t_s": time.time()}
        if error is not None:
            reply["error"] = error
        elif cmd not in ("ping", "goto"):             # gotos (20 a second while dragging) are in the flight log
            log.info("teleop: %s (goal %s m)", cmd, np.round(self.goal_enu_m, 2).tolist())
        if kill is not None:
            threading.Thread(target=kill, daemon=True, name="teleop-kill").start()
        return reply

    def _apply(self, cmd: str, pos_enu_m, via: str) -> str | None:
        if cmd == "ping":
            return None
        if cmd == "kill":
            self.failsafe = "kill pressed on the teleop page: motors disarmed"
            self._events.append("kill")
            self.takeoff.set()
            return None
        if self.phase in ("landing", "ended") or self.failsafe or self.finished:
            return "the flight is over (landing or landed): restart fly --teleop to fly again"
        if cmd == "goto":
            try:
                requested = np.asarray(pos_enu_m, float).reshape(3)
            except (TypeError, ValueError):
                requested = np.full(3, np.nan)
            if not np.all(np.isfinite(requested)):
                return f"goto needs pos_enu_m: three finite numbers [m], got {pos_enu_m!r}"
            self.goal_enu_m = self.clamp(requested)
            via = via if via in ("drag", "key") else "page"
            self._event(f"{via} {' '.join(f'{v:.3f}' for v in requested)} ->", self.goal_enu_m)
        elif cmd == "hold":                        # the target stops where it is; the drone settles on it
            if self.target_enu_m is None:
                return "not flying: nothing to hold (press Take off first)"
            self.goal_enu_m = self.target_enu_m.copy()
            self._event("hold", self.goal_enu_m)
        elif cmd == "takeoff":
            if self.phase != "ready":
                return f"already {self.phase}"
            self.phase = "taking off"
            self._event("takeoff", self.goal_enu_m)
            self.takeoff.set()
        elif cmd == "land":
            if self.phase == "ready":
                return "not flying: nothing to land"
            self.finished = True
            self._events.append("land")
        else:
            return f"unknown command {cmd!r}: use goto, takeoff, hold, land, kill or ping"
        return None

    def snapshot(self) -> dict:
        with self._lock:
            now = self.clock()
            holding = self._hold_since_s is not None and self.phase == "flying"
            return {"phase": self.phase, "goal_enu_m": self.goal_enu_m.tolist(),
                    "target_enu_m": _finite_list(self.target_enu_m),
                    "goal_min_enu_m": self.goal_min_enu_m.tolist(), "goal_max_enu_m": self.goal_max_enu_m.tolist(),
                    "holding_s": now - self._hold_since_s if holding else None,
                    "land_after_s": self.land_after_s, "failsafe": self.failsafe or self.stop_reason}


def vehicle_status(link, course: Course) -> dict:
    """What the page shows about the vehicle, from the link's newest telemetry."""
    state = link.latest_state()
    now = link.clock.now() if hasattr(link, "clock") else time.monotonic()   # the link's stamps' clock (lockstep: sim)
    out = {"bounds_min_enu_m": course.bounds_min_enu_m.tolist(), "bounds_max_enu_m": course.bounds_max_enu_m.tolist(),
           "mode": link.mode_name(), "armed": bool(link.armed), "battery_v": _finite(link.battery_v),
           "link_latency_ms": link.latency_ms(),
           "heartbeat_age_s": None if link.last_heartbeat_s is None else now - link.last_heartbeat_s}
    if state is not None:
        out.update(pos_enu_m=_finite_list(state["pos_enu_m"]), vel_enu_m_s=_finite_list(state["vel_enu_m_s"]),
                   yaw_enu_rad=_finite(frames.quat_to_euler_rpy(state["quat_wxyz"])[2]),
                   telemetry_age_s=now - state["t_s"])
    return out


def run_teleop(link, policy, course: Course, profile, log_path: str, targets: TeleopTargets, **fly_kwargs):
    """Waits for Take off on the page, then flies with the operator's target (fly_course) until Land,
    a failsafe or a lost page; returns fly_course's FlightResult, or None when nothing flew (Ctrl-C
    or Kill before take-off)."""
    from flight.runner import fly_course
    targets.on_kill = lambda: link.disarm(force=True)
    try:
        while not targets.takeoff.wait(0.1):
            pass
    except KeyboardInterrupt:
        targets.phase = "ended"
        return None
    if targets.failsafe is not None:
        targets.phase = "ended"
        return None
    try:
        result = fly_course(link, policy, course, profile, log_path, targets=targets, **fly_kwargs)
    finally:
        targets.phase = "ended"
    if result.failsafe is not None and result.failsafe.startswith("kill"):
        link.disarm(force=True)                 # the kill thread's disarm, once more after the loop stopped
    return result
