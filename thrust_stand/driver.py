"""The one small interface every stand driver has and its errors (`open_stand`, port string -> driver,
is in thrust_stand/stands.py).

    with open_stand("/dev/ttyUSB0,115200", max_throttle=0.8) as stand:   # handshake on enter
        stand.tare()
        stand.arm(rate_hz=200)                 # ESC armed at throttle 0, samples streaming
        stand.set_throttle(0.3)                # refused (ThrottleLimitError) above max_throttle
        samples = stand.read_samples(0.02)     # also keeps the heartbeat going and watches for loss
    # leaving the block, for any reason, commands throttle 0 (stop) and closes the port

A driver that sees no sample for `loss_timeout_s` (250 ms) commands throttle 0 itself and raises
StandLinkLost.
"""
from __future__ import annotations

from thrust_stand.protocol import WATCHDOG_S, Sample


class StandError(OSError):
    """The stand or its link failed (refused a command, reported a fault, went silent)."""


class StandLinkLost(StandError):
    """No samples (or the port disappeared) for longer than the loss bound: throttle 0 was commanded."""


class ThrottleLimitError(ValueError):
    """A throttle above the run's limit, refused before anything was sent."""


def check_throttle(throttle: float, max_throttle: float) -> float:
    throttle, max_throttle = float(throttle), float(max_throttle)
    if not 0.0 <= throttle <= 1.0:
        raise ThrottleLimitError(f"throttle {throttle:g} is outside 0..1")
    if not 0.0 <= max_throttle <= 1.0:                 # NaN lands here too: it would switch the check off
        raise ThrottleLimitError(f"the throttle limit {max_throttle:g} is not a number in 0..1")
    if not throttle <= max_throttle + 1e-9:
        raise ThrottleLimitError(f"throttle {throttle:g} is above this run's limit of {max_throttle:g} "
                                 "(raise --max-throttle only if the motor, prop and stand are rated for it)")
    return throttle


class StandDriver:
    """Base of the drivers: limits and the always-stop context manager. Subclasses implement
    open, tare, arm, _send_throttle, read_samples, stop (must not raise) and close."""

    kind = "stand"

    def __init__(self, max_throttle: float = 1.0, loss_timeout_s: float = WATCHDOG_S):
        self.max_throttle = float(max_throttle)
        self.loss_timeout_s = float(loss_timeout_s)
        if not 0.0 <= self.max_throttle <= 1.0:
            raise ThrottleLimitError(f"max_throttle {max_throttle!r} is not a number in 0..1")
        if not 0.0 < self.loss_timeout_s <= 10.0:
            raise ValueError(f"loss_timeout_s {loss_timeout_s!r} must be a number of seconds in (0, 10]")
        self.info: dict = {}
        self.counters = {"bad_checksum": 0, "malformed": 0, "missed_samples": 0, "samples": 0,
                         "clock_backwards": 0}
        self.throttle = 0.0   # last commanded

    # -- the interface
    def open(self) -> None:
        raise NotImplementedError

    def tare(self) -> None:
        raise NotImplementedError

    def start_streaming(self, rate_hz: float) -> None:
        """Samples at rate_hz from now on (the motor stays stopped)."""
        raise NotImplementedError

    def arm(self, rate_hz: float) -> None:
        """start_streaming, then the ESC armed at throttle 0."""
        raise NotImplementedError

    def set_throttle(self, throttle: float) -> None:
        throttle = check_throttle(throttle, self.max_throttle)
        self._send_throttle(throttle)
        self.throttle = throttle

    def _send_throttle(self, throttle: float) -> None:
        raise NotImplementedError

    def read_samples(self, timeout_s: float = 0.02) -> list[Sample]:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def describe(self) -> dict:
        """What goes into the log's sidecar about this stand."""
        return {"driver": self.kind, **self.info}

    def __enter__(self):
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            self.stop()
        finally:
            self.close()
        return False
