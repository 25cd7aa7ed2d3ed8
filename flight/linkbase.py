"""What every flight-controller link shares (MAVLink in flight/link.py, MSP in flight/msp/):
the context manager that leaves the vehicle landed and disarmed, waiting for a state estimate,
the link's round-trip time, and its clock. A link sets `armed`, `ground_z_enu_m` and `_rtt_s` (recent
round trips, seconds) and provides open(), close(), connected(), latest_state() and land_and_disarm().

The clock (`link.clock`) is what the runner and the link time the flight by: WallClock, the monotonic
clock, by default; a lockstep link (flight/link.py, `MavLink(lockstep=True)`) has the simulated
vehicle's own time instead, which passes only when the link advances it."""
from __future__ import annotations

import logging
import time

import numpy as np

log = logging.getLogger(__name__)


class LinkError(ConnectionError):
    """The vehicle cannot be flown through this link (MAVLink or MSP); the message says what to change."""


def call_quietly(fn) -> None:
    """fn() if given; an error in it (a log row while landing) is logged, never raised into the landing."""
    if fn is None:
        return
    try:
        fn()
    except Exception:                      # noqa: BLE001 - nothing here may stop a landing
        log.exception("while landing")


# a state older than this when asked for: first give the reader threads up to CATCH_UP_WAIT_S to read
# what may wait in their sockets (our own process stalled: the vehicle was not silent)
CATCH_UP_AFTER_S, CATCH_UP_WAIT_S = 0.1, 0.03


class WallClock:
    """Real time: the monotonic clock, and sleeping on it."""
    lockstep = False

    @staticmethod
    def now() -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        self.sleep_until(self.now() + seconds)

    def sleep_until(self, t_s: float) -> float:
        """Sleeps until t_s; returns how late it already was (0.0: on time)."""
        pause = t_s - time.monotonic()
        if pause > 0:
            time.sleep(pause)
            return 0.0
        return -pause


WALL_CLOCK = WallClock()


class LinkBase:
    #: what the flight is timed by (WallClock; a lockstep link: the simulated vehicle's time)
    clock = WALL_CLOCK
    #: the flight controller's own failsafe, as a reason for the runner to stop (None: none)
    fc_failsafe: str | None = None
    #: monotonic time of the newest message of any kind from the flight controller: the link is judged
    #: by all its telemetry, not by one 1 Hz heartbeat that a lossy radio may drop
    last_message_s: float | None = None

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if self.connected() and self.armed:    # never leave it flying: land, then disarm
                self.land_and_disarm(timeout_s=15.0)
        finally:
            self.close()
        return False

    def wait_for_state(self, timeout_s: float = 10.0) -> dict | None:
        """The first finite state within timeout_s (None if none came); before take-off it also
        records where the vehicle stands (ground_z_enu_m)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.latest_state()
            if state is not None and np.all(np.isfinite(state["pos_enu_m"])):
                if not self.armed:
                    self.ground_z_enu_m = float(state["pos_enu_m"][2])    # where it stands before take-off
                return state
            time.sleep(0.02)
        return None

    def latency_ms(self) -> float | None:
        return float(np.median(self._rtt_s) * 1e3) if self._rtt_s else None

    def latency_text(self) -> str:
        ms = self.latency_ms()
        return f"{ms:4.1f} ms" if ms is not None else "  ? ms"
