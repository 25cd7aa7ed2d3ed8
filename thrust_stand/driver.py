"""The one small interface every stand driver has, its errors, and `open_stand` (port string -> driver).

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
    throttle = float(throttle)
    if not 0.0 <= throttle <= 1.0:
        raise ThrottleLimitError(f"throttle {throttle:g} is outside 0..1")
    if throttle > max_throttle + 1e-9:
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
        self.info: dict = {}
        self.counters = {"bad_checksum": 0, "malformed": 0, "missed_samples": 0, "samples": 0}
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


def open_stand(port: str, *, max_throttle: float = 1.0, load_cell: str | None = None, motor: int = 1,
               loss_timeout_s: float = WATCHDOG_S) -> StandDriver:
    """A driver for a port string (not yet opened: use it in a `with`):

    - `/dev/ttyUSB0,115200` (or `/dev/ttyUSB0`, 115200 baud): a stand speaking PROTOCOL.md;
    - `mavlink:CONNECTION` (e.g. `mavlink:udpin:0.0.0.0:14550`, `mavlink:/dev/ttyACM0,921600`): a
      flight controller driving the motor with MAV_CMD_DO_MOTOR_TEST, thrust from `load_cell`.
    """
    if port.startswith("mavlink:"):
        from thrust_stand.mavlink_stand import MavlinkStand
        if not load_cell:
            raise ValueError("a MAVLink stand needs --load-cell PORT (a serial load cell speaking PROTOCOL.md) "
                             "for thrust; the flight controller reports only rpm, voltage and current")
        return MavlinkStand(port[len("mavlink:"):], load_cell, motor=motor, max_throttle=max_throttle,
                            loss_timeout_s=loss_timeout_s)
    from thrust_stand.serial_stand import SerialStand
    return SerialStand(port, max_throttle=max_throttle, loss_timeout_s=loss_timeout_s)
