"""The control loop: state -> the sim's own observation function -> ONNX policy -> command.

`fly_course` runs one flight on a connected link (flight/link.py, MAVLink): pre-flight checks,
arm and enter the offboard mode, then at the policy's control rate on the link's clock (the
monotonic clock; with a lockstep link the simulated vehicle's time, advanced one tick at a time
and waited for: the same flight, the same checks, as fast as the CPU allows, on any machine load):

    newest state (ENU / FLU, from telemetry through skyloop/frames.py)
      -> target: a point sliding along the course (flight/course.py)
      -> observation: sim.core.observe, the C function the sim itself uses
      -> action: onnxruntime
      -> safety supervisor (flight/safety.py): stop, or
      -> command: ctbr (collective thrust + body rates) or per-motor, sent by the link
      -> flight log row (with the sim's one-step prediction: the "shadow" model)

Any failsafe stops the setpoint stream, commands LAND and disarms on the ground; Ctrl-C lands, a
second Ctrl-C disarms. The runner never imports plotting or training code (it runs headless on a
companion computer); the picture at the end is drawn by flight/plot.py only when asked.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from flight import realtime
from flight.command import hold_action
from flight.course import Course, CourseProgress, races
from flight.linkbase import WALL_CLOCK, call_quietly
from flight.origin import place_course
from flight.safety import Limits, Supervisor, preflight
from flight.takeoff import Takeoff
from sim.core import ACTION_HISTORY, ACTION_SIZE, OBS_GATES, observe
from sim.env import DroneEnv
from sim.profiles import Profile
from skyloop.frames import flu_to_frd
from skyloop.rowlog import RowLogWriter

log = logging.getLogger(__name__)
FLIGHT_LOG_FORMAT = "skyloop.flight_log/1"


def _xyz(name):
    return [f"{name}_{a}" for a in "xyz"]


FLIGHT_COLUMNS = tuple(
    ["t_s", "tick_ms"] + _xyz("pos_enu_m") + _xyz("vel_enu_m_s") + ["quat_w", "quat_x", "quat_y", "quat_z"]
    + _xyz("omega_frd_rad_s") + _xyz("target_enu_m") + [f"action_{k}" for k in range(ACTION_SIZE)]
    + ["sent_thrust"] + _xyz("sent_rate_frd_rad_s") + [f"sent_motor_{k}" for k in range(1, 5)]
    + [f"rpm_{k}" for k in range(1, 5)] + ["battery_v", "mode", "armed", "gate", "failsafe"]
    + _xyz("shadow_pos_enu_m") + _xyz("shadow_vel_enu_m_s")
    + _xyz("goal_enu_m") + ["target_event"]      # teleop (flight/teleop.py): the operator's goal, its changes
    # a flight controller's own gyro and motor outputs 0..1 (sim order), where the link reads them (flight/msp/)
    + _xyz("fc_omega_frd_rad_s") + [f"fc_motor_{k}" for k in range(1, 5)]
    # "flight" for control ticks; "landing" for the rows logged after them, until the vehicle disarms
    + ["phase"])


class Shadow:
    """The sim's one-step prediction: from the last state and the command sent, where the nominal
    drone would be one control step later. Also gives the nominal hover action (an observation)."""

    def __init__(self, profile: Profile, action_mode: str):
        self.env = DroneEnv(1, profile.nominal(), action_mode=action_mode, randomize=False,
                            task={"bounds_m": [1e4, 1e4, 1e4], "episode_s": 1e5})
        self.env.reset(seed=0)
        d = self.env.core.drone
        self.hover_action = float(d["hover_action"][0, 0])
        self.thrust_max_n = float(d["nom_thrust_max"][0, 0])
        self.mass_kg = float(d["mass_kg"][0, 0])

    def predict(self, state: dict, action) -> tuple[np.ndarray, np.ndarray]:
        self.env.set_state(0, pos_enu_m=state["pos_enu_m"], vel_enu_m_s=state["vel_enu_m_s"],
                           quat_wxyz=state["quat_wxyz"], omega_flu_rad_s=state["omega_flu_rad_s"])
        self.env.step_physics(np.asarray(action, np.float32).reshape(1, ACTION_SIZE))
        d = self.env.core.drone
        return d["pos_enu_m"][:, 0].copy(), d["vel_enu_m_s"][:, 0].copy()


@dataclass
class FlightResult:
    gates_passed: int
    gates_total: int
    laps: int
    lap_time_s: float | None
    failsafe: str | None
    tick_p99_ms: float
    missed_ticks: int
    ticks: int
    log: str
    link_latency_ms: float | None = None
    failsafe_at_s: float | None = None           # the link's clock when the failsafe fired (lockstep: sim time)
    path_enu_m: list = field(default_factory=list, repr=False)
    log_fault: str | None = None                 # the flight log or .tlog could not be written (a full disk)

    def summary(self) -> dict:
        return {"gates_passed": self.gates_passed, "gates_total": self.gates_total, "laps": self.laps,
                "lap_time_s": self.lap_time_s, "failsafe": self.failsafe, "tick_p99_ms": self.tick_p99_ms,
                "missed_ticks": self.missed_ticks, "ticks": self.ticks, "link_latency_ms": self.link_latency_ms,
                "log": self.log, "log_fault": self.log_fault}


class StatusLine:
    """One live line on stderr (a terminal) or a line every few seconds (a log file)."""

    def __init__(self, stream=None):
        stream = stream or sys.stderr          # the stderr of now (a default bound at import may be closed since)
        self.stream, self.tty, self.last = stream, stream.isatty(), 0.0

    def show(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < (0.2 if self.tty else 5.0):
            return
        self.last = now
        self.stream.write(("\r" + text + "\x1b[K") if self.tty else text + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


class TargetSource(Protocol):
    """What fly_course reads its target from each tick: flight/course.py's CourseProgress (the
    course's sliding target, or the next gate in race mode) or flight/teleop.py's TeleopTargets
    (the operator's)."""
    race: bool                          # the policy sees the next gates (next_gates: none when False)
    passes: list                        # (gate number over all laps, time) of the gates passed
    next_gate: int
    total_gates: int
    failsafe: str | None                # a reason to stop and land, or None

    @property
    def finished(self) -> bool: ...

    def update(self, pos_enu_m, t_s: float) -> np.ndarray:
        """Records progress along the path flown; returns the target (ENU)."""

    def next_gates(self, count: int) -> np.ndarray: ...

    def log_fields(self) -> dict:
        """Extra flight-log columns for this tick."""

    def stopped(self, reason: str | None) -> None:
        """Told once when the loop ends (None: finished)."""


@dataclass
class _Loop:
    """What the control loop keeps between ticks."""
    dt_s: float
    last_actions: np.ndarray
    policy_state: object
    start_pos: np.ndarray
    stall_s: float = 0.5                  # no tick for this long: our own loop stalled (ends the flight)
    takeoff: Takeoff | None = None
    last_tick_s: float | None = None
    t0: float = 0.0
    next_tick: float = 0.0
    ticks: int = 0
    missed: int = 0
    tick_ms: list = field(default_factory=list)
    path: list = field(default_factory=list)
    view: object = None                   # flight/view.py's FlightView: told each tick (an append, never a wait)
    clock: object = WALL_CLOCK            # the link's: monotonic, or the simulated vehicle's time in lockstep

    def sleep_to_next_tick(self) -> None:
        self.next_tick += self.dt_s
        late_s = self.clock.sleep_until(self.next_tick)    # lockstep: advances the vehicle, never late
        if late_s > 0:
            self.missed += int(late_s // self.dt_s) + 1
            self.next_tick = self.clock.now()


def fly_course(link, policy, course: Course, profile: Profile, log_path: str, *, limits: Limits = Limits(),
               lookahead_m: float = 1.5, max_time_s: float = 300.0, status: StatusLine | None = None,
               meta: dict | None = None, targets: TargetSource | None = None,
               course_frame: str = "local", view=None) -> FlightResult:
    """Flies the course once (all laps) on a connected link. Returns what happened; a failsafe is
    a result (with its reason), not an exception. `targets` replaces the course's sliding target
    (CourseProgress) with another TargetSource, e.g. flight/teleop.py's TeleopTargets.
    `course_frame` (flight/origin.py): "local", the vehicle must stand at the course's start;
    "start", the course is placed at the vehicle (a GPS EKF origin is where it started).
    `view` (flight/view.py's FlightView) gets each tick for the live flight view and its ghost."""
    status = status or StatusLine()
    mode = policy.action_mode
    shadow = Shadow(profile, mode)
    state = link.wait_for_state(timeout_s=10.0)
    offset = np.zeros(3)
    if state is not None:
        course, offset = place_course(course, state["pos_enu_m"], course_frame)
    problems = preflight(course, state, link.battery_v, link.cells, limits)
    if problems:
        raise PreflightError("pre-flight checks failed, not arming:\n  - " + "\n  - ".join(problems))
    progress: TargetSource = targets if targets is not None else CourseProgress(course, lookahead_m,
                                                                                race=races(policy))
    supervisor = Supervisor(course, limits, link.cells)
    hold = hold_action(mode, shadow.hover_action, on_ground=True)
    loop = _Loop(1.0 / policy.control_hz, np.tile(hold, ACTION_HISTORY).astype(np.float32),
                 policy.initial_state(1), np.asarray(state["pos_enu_m"], float))
    loop.view, loop.clock = view, getattr(link, "clock", WALL_CLOCK)
    meta = {**(meta or {}), "course": course.to_json(), "course_frame": course_frame,
            "course_offset_enu_m": offset.tolist(), "profile": profile.name, "policy_mode": mode,
            "control_hz": policy.control_hz, "link": link.describe(), "cpu_priority": realtime.describe()}
    failsafe = failsafe_at = None
    with RowLogWriter(log_path, FLIGHT_COLUMNS, FLIGHT_LOG_FORMAT, meta) as flight_log:
        link.start_offboard(lambda: link.send_action(hold_action(mode, shadow.hover_action, True), shadow))
        loop.t0 = loop.next_tick = loop.last_tick_s = loop.clock.now()
        # the motors are not live at the arm acknowledgement: hold until they are and have spooled up
        loop.takeoff = Takeoff(link, mode, shadow.hover_action, loop.t0, spool_s=getattr(link, "spool_s", 1.2))
        interrupts = 0
        try:
            try:
                while failsafe is None and not progress.finished:
                    failsafe = _tick(link, policy, shadow, progress, supervisor, loop, flight_log, max_time_s, status)
                    if failsafe is None and not progress.finished:
                        loop.sleep_to_next_tick()
            except KeyboardInterrupt:
                interrupts += 1
                failsafe = "Ctrl-C: landing (press Ctrl-C again to disarm at once)"
            if failsafe is not None:
                failsafe_at = loop.clock.now()
                log.warning("failsafe: %s", failsafe)
            status.done()
            progress.stopped(failsafe)
            if view is not None:
                view.finish(failsafe)
            landing = _landing_logger(link, loop, flight_log, failsafe, progress)
            try:
                link.land_and_disarm(timeout_s=30.0, on_tick=landing)
                call_quietly(landing)                   # the row that shows it disarmed
            except KeyboardInterrupt:
                interrupts += 1
            if interrupts > 1:
                failsafe = "Ctrl-C twice: disarmed"
                link.disarm(force=True)
        except BaseException:                # a bug or a dead link: land, never drop it from the air
            link.land_and_disarm(timeout_s=10.0, on_tick=_landing_logger(link, loop, flight_log, "error"))
            raise
        passes = progress.passes
        lap_time = passes[-1][1] - passes[0][1] if progress.finished and len(passes) > 1 else None
        flight_log.finish("completed" if failsafe is None else f"failsafe: {failsafe}",
                          gates_passed=len(passes), missed_ticks=loop.missed)
    p99 = float(np.percentile(loop.tick_ms, 99)) if loop.tick_ms else 0.0
    faults = [flight_log.meta.get("log_fault"), link.log_fault() if hasattr(link, "log_fault") else None]
    return FlightResult(len(progress.passes), progress.total_gates, course.laps, lap_time, failsafe, p99, loop.missed,
                        loop.ticks, log_path, link.latency_ms(), failsafe_at, loop.path,
                        "; ".join(f for f in faults if f) or None)


def _tick(link, policy, shadow: Shadow, progress: TargetSource, supervisor: Supervisor, loop: _Loop, flight_log,
          max_time_s: float, status: StatusLine) -> str | None:
    """One control tick: newest state -> target -> observation -> action -> safety -> command -> log
    row. Returns the failsafe's reason, or None."""
    now = loop.clock.now()
    t = now - loop.t0
    gap, loop.last_tick_s = now - (loop.last_tick_s or now), now
    if gap > loop.stall_s:                  # before judging the link: its silence may be ours
        return (f"this program stalled: its control loop did not run for {gap:.2f} s (limit {loop.stall_s:g} s), "
                "so the vehicle flew its last command meanwhile (ArduPilot: until GUID_TIMEOUT, then it levels); "
                "the runner stopped, not the vehicle's link. Give the runner a core of its own (nice, taskset)")
    tick_start = time.perf_counter()
    state = link.latest_state()
    pos = state["pos_enu_m"] if state is not None else loop.start_pos
    target = progress.update(pos, t)        # the first leg climbs straight up from the start
    action = None
    hold = loop.takeoff.hold(now) if loop.takeoff is not None else None
    if hold is not None:
        action = hold                       # arming / spooling: the policy has not taken over yet
    elif state is not None:
        obs = observe(state["pos_enu_m"], state["vel_enu_m_s"], state["quat_wxyz"], state["omega_flu_rad_s"],
                      target, loop.last_actions, shadow.hover_action,
                      gates=progress.next_gates(OBS_GATES))
        action, loop.policy_state = policy.run(obs[None], loop.policy_state)
        action = action[0]
    failsafe = supervisor.check(now, state, action, link.last_message_s, link.battery_v)
    if failsafe is None and t > max_time_s:
        failsafe = f"time limit: the course was not finished in {max_time_s:g} s"
    failsafe = failsafe or progress.failsafe or link.fc_failsafe or (loop.takeoff and loop.takeoff.failsafe)
    if failsafe is not None:
        return failsafe
    seen = _state_row(t, state, link)       # what this tick saw (a lockstep vehicle steps on the command)
    sent = link.send_action(action, shadow)
    seen_actions, loop.last_actions = loop.last_actions, np.concatenate([action, loop.last_actions[:-ACTION_SIZE]]
                                                                        ).astype(np.float32)
    shadow_pos, shadow_vel = shadow.predict(state, action)
    elapsed_ms = (time.perf_counter() - tick_start) * 1e3
    loop.tick_ms.append(elapsed_ms)
    loop.path.append(np.array(state["pos_enu_m"], float))
    row = _row(seen, elapsed_ms, target, action, sent, progress, shadow_pos, shadow_vel)
    if hold is not None:
        row["phase"] = loop.takeoff.phase   # "arming" (motors stopped) or "spool"
    flight_log.write(**row, **progress.log_fields())
    loop.ticks += 1
    if loop.view is not None and hold is None:      # not while the take-off holds the policy's action
        loop.view.publish(t, state, target, seen_actions, elapsed_ms, loop.missed, progress, link.battery_v)
    status.show(f"{link.mode_name():<14} pos {np.round(state['pos_enu_m'], 1).tolist()} m  gate "
                f"{min(progress.next_gate + 1, progress.total_gates)}/{progress.total_gates}  "
                f"t {t:5.1f} s  link {link.latency_text()}  overruns {loop.missed}")
    return None


class PreflightError(ValueError):
    """The vehicle or the plan is not ready; nothing was armed."""


def _landing_logger(link, loop: _Loop, flight_log, reason: str | None, progress=None):
    """A row per call while the vehicle lands (until it disarms): state, mode, armed, why it lands,
    and the target source's columns (teleop's Land event happens on the tick that ends the loop)."""
    last = [None]

    def write() -> None:
        state = link.latest_state()
        if state is None or state["t_s"] == last[0]:
            return                                   # nothing new since the last row
        last[0] = state["t_s"]
        row = _state_row(loop.clock.now() - loop.t0, state, link)
        extra = progress.log_fields() if progress is not None else {}
        flight_log.write(**row, failsafe=reason or "", phase="landing", **extra)
    return write


def _state_row(t, state, link) -> dict:
    """The columns every row has: time, the vehicle's state, battery, mode, armed, rpm, its own gyro/motors."""
    row = {"t_s": t, "battery_v": link.battery_v, "mode": link.mode_name(), "armed": int(link.armed)}
    for name, values in (("pos_enu_m", state["pos_enu_m"]), ("vel_enu_m_s", state["vel_enu_m_s"]),
                         ("omega_frd_rad_s", flu_to_frd(state["omega_flu_rad_s"]))):
        row.update(zip(_xyz(name), (float(v) for v in values)))
    row.update(zip(("quat_w", "quat_x", "quat_y", "quat_z"), (float(v) for v in state["quat_wxyz"])))
    rpm = state.get("rpm")
    if rpm is not None:
        row.update({f"rpm_{k + 1}": float(r) for k, r in enumerate(rpm)})
    if state.get("fc_omega_flu_rad_s") is not None:
        row.update(zip(_xyz("fc_omega_frd_rad_s"), (float(v) for v in flu_to_frd(state["fc_omega_flu_rad_s"]))))
    if state.get("fc_motors") is not None:
        row.update({f"fc_motor_{k + 1}": float(m) for k, m in enumerate(state["fc_motors"])})
    return row


def _row(seen, tick_ms, target, action, sent, progress, shadow_pos, shadow_vel) -> dict:
    row = {**seen, "tick_ms": tick_ms, "gate": progress.next_gate, "failsafe": "",
           "phase": "flight"}
    for name, values in (("target_enu_m", target), ("shadow_pos_enu_m", shadow_pos),
                         ("shadow_vel_enu_m_s", shadow_vel)):
        row.update(zip(_xyz(name), (float(v) for v in values)))
    row.update({f"action_{k}": float(a) for k, a in enumerate(action)})
    if "thrust" in sent:
        row["sent_thrust"] = sent["thrust"]
        row.update(zip(_xyz("sent_rate_frd_rad_s"), sent["rate_frd_rad_s"]))
    if "motors" in sent:
        row.update({f"sent_motor_{k + 1}": float(m) for k, m in enumerate(sent["motors"])})
    return row
