"""MSP (MultiWii Serial Protocol, as Betaflight speaks it): message ids, framing, and the
decoders of the replies the link reads.

Framing (Betaflight src/main/msp/msp_serial.c):
    v1  '$' 'M' dir size:u8 cmd:u8 payload xor(size, cmd, payload)
    v2  '$' 'X' dir flag:u8 cmd:u16le size:u16le payload crc8_dvb_s2(flag .. payload)
dir is '<' to the flight controller, '>' from it, '!' for an error reply.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from flight.linkbase import LinkError  # noqa: F401  (one error for every link; re-exported)
from skyloop import frames

# message ids (Betaflight src/main/msp/msp_protocol.h)
MSP_API_VERSION, MSP_FC_VARIANT = 1, 2
MSP_MODE_RANGES, MSP_SET_MODE_RANGE, MSP_FEATURE_CONFIG = 34, 35, 36
MSP_STATUS, MSP_RAW_IMU, MSP_MOTOR, MSP_RC, MSP_ATTITUDE, MSP_ANALOG, MSP_RC_TUNING = 101, 102, 104, 105, 108, 110, 111
MSP_BATTERY_STATE, MSP_MOTOR_TELEMETRY, MSP_STATUS_EX = 130, 139, 150
MSP_SET_ARMING_DISABLED, MSP_SET_RAW_RC, MSP_MULTIPLE_MSP = 99, 200, 230

FEATURE_RX_MSP = 1 << 14
BOX_ARM, BOX_FAILSAFE = 0, 27                # permanent box ids (src/main/fc/rc_modes.h)
# arming disable flags (src/main/fc/runtime_config.h), bit -> name
ARMING_DISABLED = ("NO_GYRO", "FAILSAFE", "RX_FAILSAFE", "NOT_DISARMED", "BOXFAILSAFE", "RUNAWAY_TAKEOFF",
                   "CRASH_DETECTED", "THROTTLE", "ANGLE", "BOOT_GRACE_TIME", "NOPREARM", "LOAD", "CALIBRATING",
                   "CLI", "CMS_MENU", "BST", "MSP", "PARALYZE", "GPS", "RESC", "DSHOT_TELEM", "REBOOT_REQUIRED",
                   "DSHOT_BITBANG", "ACC_CALIBRATION", "MOTOR_PROTOCOL", "CRASHFLIP", "ALTHOLD", "POSHOLD",
                   "ARM_SWITCH")
ARM_SWITCH_ONLY = 1 << ARMING_DISABLED.index("ARM_SWITCH")
GYRO_DEG_S_PER_LSB = 2000.0 / 32768    # MSP_RAW_IMU sends gyro / scale: the +-2000 deg/s range's units


class MspError(ValueError):
    """A malformed MSP frame or reply; the message says what was wrong with it."""


# ------------------------------------------------------------------------------------ framing
def crc8_dvb_s2(data: bytes, crc: int = 0) -> int:
    """CRC-8/DVB-S2 (polynomial 0xD5), MSP v2's checksum."""
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0xD5) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def _xor(data: bytes) -> int:
    x = 0
    for byte in data:
        x ^= byte
    return x


def encode_v1(cmd: int, payload: bytes = b"", direction: str = "<") -> bytes:
    if not 0 <= cmd <= 255 or len(payload) > 254:
        raise MspError(f"MSP v1 carries ids 0..255 and at most 254 payload bytes (id {cmd}, {len(payload)} bytes): "
                       "use encode_v2")
    body = bytes([len(payload), cmd]) + payload
    return b"$M" + direction.encode() + body + bytes([_xor(body)])


def encode_v2(cmd: int, payload: bytes = b"", direction: str = "<", flag: int = 0) -> bytes:
    if not 0 <= cmd <= 0xFFFF or len(payload) > 0xFFFF:
        raise MspError(f"MSP v2 carries ids 0..65535 and at most 65535 payload bytes (id {cmd}, {len(payload)} bytes)")
    body = struct.pack("<BHH", flag, cmd, len(payload)) + payload
    return b"$X" + direction.encode() + body + bytes([crc8_dvb_s2(body)])


@dataclass(frozen=True)
class Frame:
    version: int          # 1 or 2
    direction: str        # '<' request, '>' reply, '!' error reply
    cmd: int
    payload: bytes


class MspParser:
    """Byte stream -> frames. Frames with a bad checksum are dropped and counted in `bad_frames`;
    bytes between frames are skipped (counted in `skipped_bytes`)."""

    def __init__(self):
        self.buffer = bytearray()
        self.bad_frames = 0
        self.skipped_bytes = 0

    def feed(self, data: bytes) -> list[Frame]:
        self.buffer += data
        out = []
        while True:
            start = self.buffer.find(b"$")
            if start < 0:
                self.skipped_bytes += len(self.buffer)
                self.buffer.clear()
                return out
            if start:
                self.skipped_bytes += start
                del self.buffer[:start]
            frame, used = self._one()
            if used == 0:
                return out              # incomplete: wait for more bytes
            if frame is not None:
                out.append(frame)
            del self.buffer[:used]

    def _one(self) -> tuple[Frame | None, int]:
        b = self.buffer
        if len(b) < 3:
            return None, 0
        if b[1:2] not in (b"M", b"X") or b[2:3] not in (b"<", b">", b"!"):
            self.skipped_bytes += 1
            return None, 1                        # not a header: skip the '$'
        direction = chr(b[2])
        if b[1:2] == b"M":
            if len(b) < 6 or len(b) < 6 + b[3]:
                return None, 0
            size, cmd = b[3], b[4]
            end = 5 + size
            if _xor(b[3:end]) != b[end]:
                self.bad_frames += 1
                return None, end + 1
            return Frame(1, direction, cmd, bytes(b[5:end])), end + 1
        if len(b) < 9:
            return None, 0
        _flag, cmd, size = struct.unpack_from("<BHH", b, 3)
        end = 8 + size
        if len(b) < end + 1:
            return None, 0
        if crc8_dvb_s2(b[3:end]) != b[end]:
            self.bad_frames += 1
            return None, end + 1
        return Frame(2, direction, cmd, bytes(b[8:end])), end + 1


def decode_status(payload: bytes, box_ids: list[int]) -> dict:
    """MSP_STATUS_EX -> armed, Betaflight's failsafe mode, arming-disable flag names."""
    if len(payload) < 16:
        raise MspError(f"MSP_STATUS_EX reply of {len(payload)} bytes is too short")
    extra = payload[15] & 0x0F
    flags = int.from_bytes(payload[6:10] + payload[16:16 + extra], "little")
    o = 16 + extra
    disable = struct.unpack_from("<I", payload, o + 1)[0] if len(payload) >= o + 5 else 0

    def box_on(permanent_id):
        return permanent_id in box_ids and bool(flags >> box_ids.index(permanent_id) & 1)
    return {"armed": box_on(BOX_ARM), "failsafe_mode": box_on(BOX_FAILSAFE), "arming_disable_bits": disable,
            "arming_disabled": [n for k, n in enumerate(ARMING_DISABLED) if disable >> k & 1]}


def attitude_to_quat_enu_flu(payload: bytes) -> np.ndarray:
    """MSP_ATTITUDE (roll right, pitch nose down [0.1 deg], heading [deg] clockwise from north) ->
    quaternion FLU -> ENU."""
    roll, pitch, heading = struct.unpack_from("<hhh", payload)
    q_ned_frd = frames.euler_rpy_to_quat(math.radians(roll / 10), -math.radians(pitch / 10), math.radians(heading))
    return frames.quat_ned_frd_to_enu_flu(q_ned_frd)

