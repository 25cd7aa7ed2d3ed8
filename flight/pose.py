"""Pose packets: position, velocity, attitude and rotor speeds from an external source (motion
capture, or the Betaflight SITL bridge's ground truth, flight/betaflight_sitl/), for a flight
controller that knows no position (Betaflight). One UDP datagram per pose, TRUTH_FORMAT."""
from __future__ import annotations

import socket
import struct
import threading
import time

import numpy as np


class PoseError(ValueError):
    """A malformed pose packet."""


class PoseListenError(ConnectionError):
    """The pose stream's UDP port cannot be listened on; the message says what to do."""


# t_s, pos_enu_m, vel_enu_m_s, quat_wxyz (FLU -> ENU), omega_flu_rad_s, rotor_rpm (sim order)
TRUTH_FORMAT = "<d3d3d4d3d4d"
TRUTH_SIZE = struct.calcsize(TRUTH_FORMAT)


def pack_truth(t_s, pos_enu_m, vel_enu_m_s, quat_wxyz, omega_flu_rad_s, rotor_rpm) -> bytes:
    """A pose packet (motion capture, or the Betaflight SITL bridge's ground truth). Unknown
    fields (a motion capture has no rotor speeds) are NaN."""
    return struct.pack(TRUTH_FORMAT, t_s, *pos_enu_m, *vel_enu_m_s, *quat_wxyz, *omega_flu_rad_s, *rotor_rpm)


def unpack_truth(data: bytes) -> dict:
    if len(data) != TRUTH_SIZE:
        raise PoseError(f"pose packet of {len(data)} bytes, expected {TRUTH_SIZE} ({TRUTH_FORMAT})")
    v = np.array(struct.unpack(TRUTH_FORMAT, data))
    return {"t_s": v[0], "pos_enu_m": v[1:4], "vel_enu_m_s": v[4:7], "quat_wxyz": v[7:11],
            "omega_flu_rad_s": v[11:14], "rotor_rpm": v[14:18]}


class PoseReceiver:
    """Listens for pose packets (TRUTH_FORMAT) on a UDP port; keeps the newest, stamped on arrival."""

    def __init__(self, port: int, host: str = "127.0.0.1"):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.bind((host, port))
        except OSError as exc:
            raise PoseListenError(f"cannot listen for the pose stream on udp {host}:{port} ({exc}): another program "
                            "holds the port; stop it or pick another one") from None
        self.sock.settimeout(0.05)
        self.latest: tuple[float, dict] | None = None
        self.bad_packets = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="pose")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(1024)
                self.latest = (time.monotonic(), unpack_truth(data))
            except socket.timeout:
                continue
            except PoseError:
                self.bad_packets += 1
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)
        self.sock.close()
