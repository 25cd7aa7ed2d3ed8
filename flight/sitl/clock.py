"""When the simulated vehicle steps: real time (a thread steps the sim every control period,
scaled by `speed`) or lockstep (the sim advances only when the client says so: a setpoint, or a
SYSTEM_TIME up to its time_boot_ms). See flight/sitl/__init__.py."""
from __future__ import annotations

import logging
import select
import time

from flight.sitl import telemetry

log = logging.getLogger(__name__)
LOCKSTEP_RESEND_S = 0.2
MAX_TICK_S = 10.0                     # SYSTEM_TIME advances at most this far per message
SETPOINT_MESSAGES = ("SET_ATTITUDE_TARGET", "SET_ACTUATOR_CONTROL_TARGET")


def run(v) -> None:
    try:
        lockstep_loop(v) if v.lockstep else realtime_loop(v)
    except Exception:                     # never silently: a dead vehicle must be visible in the log
        log.exception("the simulated vehicle stopped")
        raise


def realtime_loop(v) -> None:
    next_t = time.monotonic()
    while not v._stop.is_set():
        v._receive()
        with v._lock:
            v._step()
        next_t += v.dt_s / v.speed
        pause = next_t - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        elif pause < -0.1:
            next_t = time.monotonic()     # fell behind (a loaded machine): do not race to catch up


def lockstep_loop(v) -> None:
    last_activity = time.monotonic()
    telemetry.stream(v, force=True)
    while not v._stop.is_set():
        steps_before = v.steps
        if not v._receive():
            fd = getattr(v.master, "fd", None)
            if fd is not None:
                select.select([fd], [], [], 0.01)
            else:
                time.sleep(0.002)
        now = time.monotonic()
        if v.steps != steps_before:
            last_activity = now
        elif now - last_activity > LOCKSTEP_RESEND_S:
            last_activity = now
            with v._lock:
                telemetry.resend_latest(v)


def tick(v, msg) -> None:
    kind = msg.get_type()
    if kind in SETPOINT_MESSAGES:
        v._step()
    elif kind == "SYSTEM_TIME":
        target_s = min(msg.time_boot_ms / 1000.0, v.sim_time_s + MAX_TICK_S)
        while v.sim_time_s + 0.5 * v.dt_s < target_s:
            v._step()
