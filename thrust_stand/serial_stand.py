"""Host side of the serial stand protocol (PROTOCOL.md) over pyserial.

Bad frames are counted (`counters['bad_checksum']`, `['malformed']`) and dropped; gaps in the
stand's sample sequence numbers are counted as `missed_samples`. A heartbeat goes out whenever
nothing else was sent for HOST_HEARTBEAT_S, from inside `read_samples`, so the stand's watchdog
stops the motor if this process stalls or dies.
"""
from __future__ import annotations

import logging
import time

import serial

from thrust_stand.driver import StandDriver, StandError, StandLinkLost
from thrust_stand.protocol import (HOST_HEARTBEAT_S, SEQ_MOD, THROTTLE_SCALE, FrameError, LineSplitter, Sample,
                                   decode, encode, parse_sample)

log = logging.getLogger(__name__)

DEFAULT_BAUD = 115200
REPLY_TIMEOUT_S = 1.0
TARE_TIMEOUT_S = 5.0


def parse_port(port: str) -> tuple[str, int]:
    """'/dev/ttyUSB0,115200' -> ('/dev/ttyUSB0', 115200); the baud rate defaults to 115200."""
    path, _, baud = port.partition(",")
    if not path:
        raise ValueError(f"port {port!r}: expected DEVICE[,BAUD], e.g. /dev/ttyUSB0,115200")
    try:
        return path, int(baud) if baud else DEFAULT_BAUD
    except ValueError:
        raise ValueError(f"port {port!r}: baud rate {baud!r} is not a whole number") from None


class SerialStand(StandDriver):
    kind = "serial"

    def __init__(self, port: str, *, max_throttle: float = 1.0, loss_timeout_s: float = 0.25, role: str = "stand"):
        super().__init__(max_throttle=max_throttle, loss_timeout_s=loss_timeout_s)
        self.port = port
        self.role = role                      # 'stand' or 'load cell' (no ESC: never armed)
        self._serial = None
        self._lines = LineSplitter()
        self._seq = 0
        self._last_tx_s = 0.0
        self._streaming = False
        self._armed = False
        self._last_sample_s = 0.0
        self._last_sample_seq = None
        self._queue: list[Sample] = []
        self._pending_error: StandError | None = None

    # -- link
    def open(self) -> None:
        path, baud = parse_port(self.port)
        try:
            self._serial = serial.Serial(path, baud, timeout=0.005, write_timeout=0.2)
        except serial.SerialException as exc:
            raise StandError(f"cannot open the {self.role} at {self.port}: {exc}") from None
        self._serial.reset_input_buffer()
        reply = self._request("HELLO", expect="INFO")
        self.info = {"port": self.port, **dict(f.split("=", 1) for f in reply[2:] if "=" in f)}
        log.info("%s at %s: %s", self.role, self.port, self.info)

    def close(self) -> None:
        if self._serial is not None and self._serial.is_open:
            try:
                self._send("RATE", 0)
            except StandError:
                pass
            self._serial.close()
        self._streaming = False

    def _write(self, frame: bytes) -> None:
        try:
            self._serial.write(frame)
        except (serial.SerialException, OSError) as exc:
            raise StandLinkLost(f"the {self.role} at {self.port} went away while writing: {exc}") from None
        self._last_tx_s = time.monotonic()

    def _send(self, kind: str, *args) -> int:
        self._seq = (self._seq + 1) % SEQ_MOD
        self._write(encode(kind, self._seq, *args))
        return self._seq

    def _request(self, kind: str, *args, expect: str = "ACK", timeout_s: float = REPLY_TIMEOUT_S) -> list[str]:
        """Sends a command and waits for its reply (ACK, or INFO for HELLO); a NAK raises StandError.
        Samples arriving meanwhile are kept for the next read_samples."""
        seq = self._send(kind, *args)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for fields in self._read_frames():
                if fields[0] in (expect, "NAK") and fields[1:2] == [str(seq)]:
                    if fields[0] == "NAK":
                        raise StandError(f"the {self.role} refused {kind}: {','.join(fields[3:]) or 'no reason given'}")
                    return fields
        raise StandError(f"no reply to {kind} from the {self.role} at {self.port} within {timeout_s:g} s "
                         "(wrong port or baud rate? is the firmware speaking PROTOCOL.md?)")

    def _read_frames(self) -> list[list[str]]:
        """Decoded frames from whatever arrived (waits up to the port timeout for the first byte).
        Samples are queued here; the other frames are returned."""
        try:
            data = self._serial.read(max(self._serial.in_waiting, 1))
        except (serial.SerialException, OSError) as exc:
            raise StandLinkLost(f"the {self.role} at {self.port} went away: {exc}") from None
        frames = []
        for line in self._lines.feed(data):
            if not line.strip() or line.startswith(b"#"):
                continue                      # blank, or the firmware's debug text
            try:
                fields = decode(line)
                if fields[0] == "S":
                    self._take_sample(parse_sample(fields))
                    continue
            except FrameError as exc:
                self.counters["bad_checksum" if exc.kind == "checksum" else "malformed"] += 1
                log.debug("dropped a line from the %s: %s", self.role, exc)
                continue
            if fields[0] == "ERR":
                self._armed = False
                raise StandError(f"the {self.role} reported a fault: {','.join(fields[2:])}")
            frames.append(fields)
        self.counters["malformed"] += self._lines.overlong
        self._lines.overlong = 0
        return frames

    def _take_sample(self, sample: Sample) -> None:
        if self._last_sample_seq is not None:
            self.counters["missed_samples"] += (sample.seq - self._last_sample_seq - 1) % SEQ_MOD
        self._last_sample_seq = sample.seq
        self._last_sample_s = time.monotonic()
        self.counters["samples"] += 1
        self._queue.append(sample)

    # -- the interface
    def tare(self) -> None:
        self._request("TARE", timeout_s=TARE_TIMEOUT_S)

    def start_streaming(self, rate_hz: float) -> None:
        self._request("RATE", int(round(rate_hz)))
        self._streaming = True
        self._last_sample_s = time.monotonic()
        self._last_sample_seq = None

    def arm(self, rate_hz: float) -> None:
        self.start_streaming(rate_hz)
        self._request("ARM")
        self._armed = True

    def _send_throttle(self, throttle: float) -> None:
        if not self._armed:
            raise StandError("set_throttle before arm(): the ESC is not armed")
        self._send("THR", int(round(throttle * THROTTLE_SCALE)))

    def read_samples(self, timeout_s: float = 0.02) -> list[Sample]:
        """The samples received since the last call (waiting up to timeout_s for one). What is already
        in the port buffer is read before the link is judged: after a host stall those samples are
        the record of what the motor did, so they are returned first and a fault that came after
        them (the stand's watchdog ERR, a NAK) is raised on the next call."""
        if self._pending_error is not None:
            error, self._pending_error = self._pending_error, None
            raise error
        deadline = time.monotonic() + timeout_s
        while True:
            if self._armed and time.monotonic() - self._last_tx_s >= HOST_HEARTBEAT_S:
                self._send("HB")
            try:
                for fields in self._read_frames():
                    if fields[0] == "NAK":
                        raise StandError(f"the {self.role} refused command {fields[1]} ({fields[2:3]}): "
                                         f"{','.join(fields[3:])}")
            except StandError as exc:
                if isinstance(exc, StandLinkLost):
                    self.stop()
                if not self._queue:
                    raise
                self._pending_error = exc
            if self._queue:
                out, self._queue = self._queue, []
                return out
            now = time.monotonic()
            if self._streaming and now - self._last_sample_s > self.loss_timeout_s:
                silence = now - self._last_sample_s
                self.stop()
                raise StandLinkLost(f"no sample from the {self.role} for {silence * 1000:.0f} ms "
                                    f"(bound {self.loss_timeout_s * 1000:.0f} ms): throttle 0 commanded")
            if now >= deadline:
                return []

    def stop(self) -> None:
        """Throttle 0 and disarm; never raises (a port that is gone is logged)."""
        if self._serial is None or not self._serial.is_open:
            return
        was_armed, self._armed = self._armed, False
        self.throttle = 0.0
        try:
            if was_armed:
                self._send("THR", 0)
            if self.role == "stand":
                self._send("STOP")
        except StandError as exc:
            log.warning("could not command throttle 0: %s", exc)
