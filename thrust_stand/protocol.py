"""The stand's serial line protocol (see PROTOCOL.md): framing, checksum, parsing.

A frame is one ASCII line `$BODY*CRC\\n`: BODY is comma-separated fields, the first being the
message type; CRC is CRC-16/CCITT-FALSE of BODY's bytes as 4 upper-case hex digits. Used by both
ends: the host driver (`thrust_stand.serial_stand`) and the simulated stand (`thrust_stand.simstand`).
"""
from __future__ import annotations

import binascii
import math
from dataclasses import dataclass

HOST_HEARTBEAT_S = 0.05      # the host sends HB (or any command) at least this often
WATCHDOG_S = 0.25            # either side: this long without the other -> throttle 0
THROTTLE_SCALE = 1000        # throttle travels as an integer per mille, 0..1000
MAX_LINE_BYTES = 160
SEQ_MOD = 65536
T_US_MOD = 2 ** 32

#: sample fields after the type, in order
SAMPLE_FIELDS = ("seq", "t_us", "throttle_pm", "esc_us", "rpm", "thrust_n", "torque_nm", "voltage_v", "current_a")


class FrameError(ValueError):
    """A line that is not a valid frame; `kind` is 'checksum' or 'malformed'."""

    def __init__(self, kind: str, message: str):
        self.kind = kind
        super().__init__(message)


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final xor)."""
    return binascii.crc_hqx(data, 0xFFFF)


def encode(*fields) -> bytes:
    """One frame from its fields: encode("THR", 7, 350) -> b'$THR,7,350*XXXX\\n'."""
    body = ",".join("" if f is None else _text(f) for f in fields).encode("ascii")
    return b"$" + body + b"*%04X\n" % crc16(body)


def _text(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def decode(line: bytes) -> list[str]:
    """The fields of one frame (without the line ending). Raises FrameError."""
    line = line.strip()
    if len(line) > MAX_LINE_BYTES:
        raise FrameError("malformed", f"line of {len(line)} bytes (at most {MAX_LINE_BYTES})")
    if not line.startswith(b"$") or len(line) < 7 or line[-5:-4] != b"*":
        raise FrameError("malformed", f"not a frame: {line[:40]!r}")
    body, crc_text = line[1:-5], line[-4:]
    try:
        crc = int(crc_text, 16)
    except ValueError:
        raise FrameError("malformed", f"checksum {crc_text!r} is not hex") from None
    if crc != crc16(body):
        raise FrameError("checksum", f"checksum {crc_text.decode('ascii', 'replace')} does not match {line[:40]!r}")
    try:
        return body.decode("ascii").split(",")
    except UnicodeDecodeError:
        raise FrameError("malformed", f"non-ASCII bytes in {line[:40]!r}") from None


@dataclass
class Sample:
    """One stand sample in SI (NaN = not measured); t_us is the stand's clock, wrapping at 2**32."""
    seq: int
    t_us: int
    throttle: float
    esc_us: float
    rpm: float
    thrust_n: float
    torque_nm: float
    voltage_v: float
    current_a: float


def _number(text: str) -> float:
    return float(text) if text else math.nan


def parse_sample(fields: list[str]) -> Sample:
    """A Sample from a decoded `S` frame's fields. Raises FrameError('malformed')."""
    if len(fields) != 1 + len(SAMPLE_FIELDS):
        raise FrameError("malformed", f"sample with {len(fields) - 1} fields, expected {len(SAMPLE_FIELDS)}")
    try:
        seq, t_us, throttle_pm = int(fields[1]), int(fields[2]), int(fields[3])
        values = [_number(f) for f in fields[4:]]
    except ValueError:
        raise FrameError("malformed", f"sample field that is not a number: {','.join(fields)}") from None
    if not 0 <= throttle_pm <= THROTTLE_SCALE:
        raise FrameError("malformed", f"sample throttle {throttle_pm} outside 0..{THROTTLE_SCALE}")
    return Sample(seq, t_us, throttle_pm / THROTTLE_SCALE, *values)


def encode_sample(s: Sample) -> bytes:
    return encode("S", s.seq % SEQ_MOD, s.t_us % T_US_MOD, int(round(s.throttle * THROTTLE_SCALE)), s.esc_us,
                  s.rpm, s.thrust_n, s.torque_nm, s.voltage_v, s.current_a)


class LineSplitter:
    """Bytes in, complete lines out (an over-long line without an end is dropped and counted)."""

    def __init__(self):
        self._buf = b""
        self.overlong = 0

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        if len(self._buf) > MAX_LINE_BYTES:
            self._buf = b""
            self.overlong += 1
        return lines
