"""The MSP link the flight runner flies a Betaflight quad through (a virtual radio: see
flight/msp/__init__.py), and its transports (TCP, serial)."""
from __future__ import annotations

import logging
import math
import socket
import struct
import threading
import time

import numpy as np

from flight.command import ctbr_command
from flight.connection import Connection
from flight.linkbase import CATCH_UP_AFTER_S, CATCH_UP_WAIT_S, LinkBase, call_quietly
from flight.msp.protocol import (ARM_SWITCH_ONLY, BOX_ARM, FEATURE_RX_MSP, GYRO_DEG_S_PER_LSB, MSP_ANALOG,
                                 MSP_API_VERSION, MSP_ATTITUDE, MSP_FC_VARIANT, MSP_FEATURE_CONFIG, MSP_MODE_RANGES,
                                 MSP_MOTOR, MSP_MOTOR_TELEMETRY, MSP_MULTIPLE_MSP, MSP_RAW_IMU, MSP_RC_TUNING,
                                 MSP_SET_RAW_RC, MSP_STATUS_EX, Frame, LinkError, MspError, MspParser,
                                 attitude_to_quat_enu_flu, decode_status, encode_v1)
from flight.msp.rates import RC_MAX_US, RC_MID_US, RC_MIN_US, RateProfile, rates_flu_to_channels
from sim.core import omega_to_throttle
from skyloop import frames
from flight.service import Worker

log = logging.getLogger(__name__)

# Betaflight handles ONE MSP command per port per serial task run (msp_serial.c, mspProcessPacket),
# and that task runs at serial_update_rate_hz, 100 by default: 100 commands a second. The link sends
# RC at rc_hz (below that) and asks for all its telemetry in one MSP_MULTIPLE_MSP, the next one only
# once the last is answered: requests take what capacity RC leaves and never queue up behind it.
TELEMETRY_CMDS = (MSP_ATTITUDE, MSP_RAW_IMU, MSP_MOTOR, MSP_STATUS_EX, MSP_ANALOG, MSP_MOTOR_TELEMETRY)
TELEMETRY_TIMEOUT_S = 0.2                    # a telemetry reply not back by then is lost: ask again
RC_CHANNELS = 8                              # AETR + AUX1..4 (Betaflight's default map, AETR1234)


# ------------------------------------------------------------------------------------ transports
class TcpTransport:
    def __init__(self, host: str, port: int, timeout_s: float = 3.0):
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout_s)
        except OSError as exc:
            raise LinkError(f"cannot connect to the flight controller at tcp:{host}:{port} ({exc}): is the "
                            "Betaflight SITL running (`skyloop sitl --betaflight`), is the port its UART's "
                            "(5761)?") from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(0.005)

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self) -> bytes:
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, BlockingIOError):
            return b""
        if not data:
            raise ConnectionError("the flight controller closed the TCP connection")
        return data

    def close(self) -> None:
        self.sock.close()


class SerialTransport:
    def __init__(self, device: str, baud: int):
        import serial
        try:
            self.port = serial.Serial(device, baud, timeout=0.005, write_timeout=0.1)
        except (OSError, serial.SerialException) as exc:
            raise LinkError(f"cannot open {device} at {baud} baud ({exc}): is the flight controller plugged in, "
                            "is MSP enabled on that UART (Betaflight Ports tab)?") from None

    def write(self, data: bytes) -> None:
        self.port.write(data)

    def read(self) -> bytes:
        return self.port.read(max(1, self.port.in_waiting))

    def close(self) -> None:
        self.port.close()


def open_transport(connection: Connection):
    if connection.kind == "tcp":
        return TcpTransport(connection.host, connection.port)
    if connection.kind == "serial":
        return SerialTransport(connection.device, connection.baud)
    raise LinkError(f"MSP runs over a serial port or TCP (tcp:127.0.0.1:5761 for the SITL), not {connection.kind}: "
                    f"{connection}")


class MspLink(LinkBase):
    """Flies a Betaflight flight controller over MSP, with the interface of flight.link.MavLink."""

    def __init__(self, connection: Connection, profile, action_mode: str = "ctbr", rate_max_rad_s=(10.0, 10.0, 5.0),
                 pose=None, rc_hz: float = 60.0, arm_timeout_s: float = 10.0):
        if action_mode != "ctbr":
            raise LinkError("Betaflight flies sticks (body rates + throttle): use a ctbr policy (--mode ctbr); "
                            "MSP cannot command single motors in flight")
        if rc_hz < 50:
            raise LinkError(f"rc_hz {rc_hz:g} is below 50 Hz: Betaflight's RX would see a choppy link")
        self.connection, self.action_mode, self.rc_hz = connection, action_mode, float(rc_hz)
        self.pose, self.arm_timeout_s = pose, arm_timeout_s
        self.rate_max_rad_s = np.asarray(rate_max_rad_s, float)      # the policy's ctbr scaling
        self._curve = np.asarray(profile.params["throttle_to_omega_rad_s"], float)
        self.autopilot = "betaflight"
        self.transport = None
        self.parser = MspParser()
        self.rates: RateProfile | None = None
        self.box_ids: list[int] = []
        self.arm_channel: int | None = None          # index into the RC channels (4 = AUX1)
        self.arm_us = RC_MIN_US
        self.channels = [RC_MID_US, RC_MID_US, RC_MIN_US, RC_MID_US] + [RC_MIN_US] * (RC_CHANNELS - 4)  # AETR + AUX
        self.armed = False
        self.status: dict = {}
        self.fc_failsafe: str | None = None
        self.battery_v: float | None = None
        self.cells: int | None = None
        self.hover_throttle = None                   # the stick mapping already puts hover where it belongs
        self.idle_frac = 0.055                       # Betaflight's default motor idle; measured at arming
        self.last_heartbeat_s: float | None = None   # newest reply from the flight controller
        self.ground_z_enu_m = 0.0
        self.uplink = True                           # False: RC frames are no longer sent (tests, link loss)
        self._att = self._gyro = self._motors = self._rpm = None
        self._replies: dict[int, bytes] = {}
        self._rtt_s: list[float] = []
        self._sent_at: dict[int, float] = {}
        self._telemetry_asked_s: float | None = None  # when it was sent; None once answered
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._worker = Worker(self._loop, "msp", join_timeout_s=1.0)
        self._stop = self._worker.stop_event
        self.rc_frames_sent = 0

    # ---------------------------------------------------------------- connect / close
    def connected(self) -> bool:
        return self.transport is not None

    def open(self) -> None:
        self.transport = open_transport(self.connection)
        try:
            variant = self.request(MSP_FC_VARIANT)
            if variant[:4] != b"BTFL":
                raise LinkError(f"the flight controller on {self.connection} runs {variant[:4]!r}, not Betaflight")
            api = self.request(MSP_API_VERSION)
            if (api[1], api[2]) < (1, 43):
                raise LinkError(f"Betaflight MSP API {api[1]}.{api[2]} is too old: 1.43 (Betaflight 4.2) or newer")
            features = struct.unpack("<I", self.request(MSP_FEATURE_CONFIG)[:4])[0]
            if not features & FEATURE_RX_MSP:
                raise LinkError("the receiver is not MSP: set Receiver -> MSP in Betaflight Configurator "
                                "(CLI: `feature RX_MSP`, `save`), or use MSP override on a real radio")
            self.rates = RateProfile.from_msp(self.request(MSP_RC_TUNING))
            self.rates.max_rate_deg_s(0)             # refuses a rates type the inversion does not know
            self.box_ids = list(self.request(119))   # MSP_BOXIDS: permanent ids, in status-flag order
            self.arm_channel, self.arm_us = self._arm_switch(self.request(MSP_MODE_RANGES))
        except BaseException:
            self.transport.close()
            self.transport = None
            raise
        self._worker.start()
        log.info("connected to Betaflight on %s: %s rates, ARM on AUX%d", self.connection, self.rates.rates_type,
                 self.arm_channel - 3)

    @staticmethod
    def _arm_switch(ranges: bytes) -> tuple[int, int]:
        for k in range(0, len(ranges) - 3, 4):
            box, aux, start, end = ranges[k:k + 4]
            if box == BOX_ARM and end > start:
                return 4 + aux, 900 + 25 * (start + end) // 2
        raise LinkError("no ARM switch is configured: assign ARM to an AUX channel (Configurator Modes tab, "
                        "or CLI `aux 0 0 0 1700 2100 0 0`)")

    def close(self) -> None:
        self._worker.stop()
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        if self.pose is not None:
            self.pose.close()

    def describe(self) -> dict:
        return {"connection": str(self.connection), "autopilot": "betaflight", "action_mode": self.action_mode,
                "rates": self.rates.__dict__ if self.rates else None, "arm_channel": self.arm_channel,
                "rc_hz": self.rc_hz}

    # ---------------------------------------------------------------- I/O
    def _send(self, cmd: int, payload: bytes = b"") -> None:
        with self._write_lock:
            self._sent_at.setdefault(cmd, time.monotonic())
            self.transport.write(encode_v1(cmd, payload))

    def _receive(self) -> None:
        for frame in self.parser.feed(self.transport.read()):
            now = time.monotonic()
            if frame.cmd == MSP_MULTIPLE_MSP:
                self._telemetry_asked_s = None
            if frame.direction != ">":
                continue
            if frame.cmd == MSP_MULTIPLE_MSP:
                self._handle(frame, now)
                p, k = frame.payload, 0
                for cmd in TELEMETRY_CMDS:           # [size][payload] per command asked, in order
                    if k >= len(p) or k + 1 + p[k] > len(p):
                        break
                    self._handle(Frame(frame.version, ">", cmd, bytes(p[k + 1:k + 1 + p[k]])), now)
                    k += 1 + p[k]
            else:
                self._handle(frame, now)

    def request(self, cmd: int, payload: bytes = b"", timeout_s: float = 1.0) -> bytes:
        """One request and its reply (before the loop thread runs, or from it)."""
        self._replies.pop(cmd, None)
        self._send(cmd, payload)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self._worker.alive():
                self._receive()
            if cmd in self._replies:
                return self._replies.pop(cmd)
            time.sleep(0.001)
        raise LinkError(f"no reply to MSP {cmd} from {self.connection} in {timeout_s:g} s: is it a Betaflight "
                        "flight controller, is MSP enabled on that port, is the baud rate right?")

    def _handle(self, frame: Frame, now: float) -> None:
        self.last_heartbeat_s = self.last_message_s = now
        sent = self._sent_at.pop(frame.cmd, None)
        if sent is not None and frame.cmd == MSP_MULTIPLE_MSP:
            self._rtt_s = (self._rtt_s + [now - sent])[-50:]
        p = frame.payload
        if frame.cmd == MSP_ATTITUDE and len(p) >= 6:
            self._att = (now, attitude_to_quat_enu_flu(p))
        elif frame.cmd == MSP_RAW_IMU and len(p) >= 12:
            raw = np.array(struct.unpack_from("<3h", p, 6), float)          # sensor units, Betaflight's axes (FLU)
            self._gyro = (now, np.radians(raw * GYRO_DEG_S_PER_LSB))
        elif frame.cmd == MSP_MOTOR and len(p) >= 8:
            raw = np.array(struct.unpack_from("<4H", p), float)
            self._motors = frames.motors_to_sim_order(np.clip((raw - 1000.0) / 1000.0, 0.0, 1.0), "betaflight")
        elif frame.cmd == MSP_MOTOR_TELEMETRY and len(p) >= 1 + 4 * 15:
            rpm = [struct.unpack_from("<I", p, 1 + 15 * k)[0] for k in range(4)]
            self._rpm = frames.motors_to_sim_order(np.asarray(rpm, float), "betaflight") if any(rpm) else None
        elif frame.cmd == MSP_STATUS_EX:
            self._on_status(decode_status(p, self.box_ids))
        elif frame.cmd == MSP_ANALOG and len(p) >= 9:
            volts = struct.unpack_from("<H", p, 7)[0] / 100.0
            self.battery_v = volts or None
        self._replies[frame.cmd] = p

    def _on_status(self, status: dict) -> None:
        was_armed = self.armed
        self.status, self.armed = status, status["armed"]
        rx_lost = {"RX_FAILSAFE", "FAILSAFE"} & set(status["arming_disabled"])
        # a glitch of a few frames is Betaflight's stage 1 and passes; stage 2 (FAILSAFE mode, then its
        # procedure: drop by default) or a disarm with the RX lost is the failsafe the runner reports
        if (status["failsafe_mode"] or (rx_lost and was_armed and not self.armed)) and self.fc_failsafe is None:
            self.fc_failsafe = ("Betaflight's RX failsafe engaged (" + ", ".join(sorted(rx_lost) or ["FAILSAFE mode"])
                                + "): it lost our RC stream")
            log.warning("%s", self.fc_failsafe)

    def _loop(self) -> None:
        """RC frames every 1 / rc_hz; telemetry (one MSP_MULTIPLE_MSP) whenever the last one is
        answered or lost. Each pass waits for replies up to the transport's read timeout (5 ms)."""
        period, next_rc = 1.0 / self.rc_hz, time.monotonic()
        while not self._stop.is_set():
            try:
                now = time.monotonic()
                if now >= next_rc:
                    next_rc = next_rc + period if next_rc + period > now else now + period   # no catch-up burst
                    if self.uplink:
                        self._send(MSP_SET_RAW_RC, struct.pack(f"<{RC_CHANNELS}H", *self.channels))
                        self.rc_frames_sent += 1
                elif self._telemetry_asked_s is None or now - self._telemetry_asked_s > TELEMETRY_TIMEOUT_S:
                    self._telemetry_asked_s = now
                    self._send(MSP_MULTIPLE_MSP, bytes(TELEMETRY_CMDS))
                self._receive()
            except (OSError, ConnectionError, MspError) as exc:
                log.warning("MSP link: %s", exc)
                self._stop.wait(0.1)

    # ---------------------------------------------------------------- state
    def latest_state(self) -> dict | None:
        """The runner's state: pose, velocity, and (when the pose source has them: the SITL bridge)
        attitude and body rates from the pose source, else Betaflight's attitude and gyro. Betaflight's
        own attitude, gyro and motor outputs are always there too (fc_*), for the flight log. One older
        than CATCH_UP_AFTER_S first waits (up to CATCH_UP_WAIT_S) for the reader threads, as MavLink's:
        after a stall of this process what arrived meanwhile is still in the sockets."""
        self._catch_up()
        pose = self.pose.latest if self.pose is not None else None
        gyro, att = self._gyro, self._att
        if pose is None or gyro is None or att is None:
            return None
        t_pose, p = pose
        have_q = np.all(np.isfinite(p["quat_wxyz"]))
        rpm = p["rotor_rpm"] if np.all(np.isfinite(p["rotor_rpm"])) else self._rpm
        have_omega = np.all(np.isfinite(p["omega_flu_rad_s"]))
        return {"t_s": min(t_pose, gyro[0]), "pos_enu_m": p["pos_enu_m"], "vel_enu_m_s": p["vel_enu_m_s"],
                "quat_wxyz": p["quat_wxyz"] if have_q else att[1],
                "omega_flu_rad_s": p["omega_flu_rad_s"] if have_omega else gyro[1], "rpm": rpm,
                "fc_quat_wxyz": att[1], "fc_omega_flu_rad_s": gyro[1], "fc_motors": self._motors}

    def _catch_up(self) -> None:
        def stale() -> bool:
            pose = self.pose.latest if self.pose is not None else None
            now = time.monotonic()
            return any(now - x[0] > CATCH_UP_AFTER_S for x in (self._gyro, pose) if x is not None)
        if not self._worker.alive() or not stale():
            return
        deadline = time.monotonic() + CATCH_UP_WAIT_S
        while stale() and time.monotonic() < deadline:
            time.sleep(0.002)                      # (the readers run meanwhile)

    def mode_name(self) -> str:
        if self.fc_failsafe:
            return "FAILSAFE"
        return "ACRO armed" if self.armed else "disarmed"

    # ---------------------------------------------------------------- commands
    def throttle_stick(self, thrust_frac: float) -> float:
        """Fraction of the maximum thrust -> throttle stick 0..1: the rotor speed that gives this thrust
        (thrust ~ omega^2), the profile's throttle -> speed curve inverted, and Betaflight's motor range
        (idle .. full) undone."""
        c0, c1, c2 = self._curve
        omega = math.sqrt(max(thrust_frac, 0.0)) * (c0 + c1 + c2)
        u = float(omega_to_throttle(self._curve, omega))
        return float(np.clip((u - self.idle_frac) / (1.0 - self.idle_frac), 0.0, 1.0))

    def send_action(self, action, shadow) -> dict:
        """A ctbr action -> sticks (streamed by the loop thread); returns what was sent, for the log."""
        rate_max = [math.radians(self.rates.max_rate_deg_s(k)) for k in range(3)]
        thrust, rates_flu = ctbr_command(action, shadow.hover_action, self.rate_max_rad_s, None)
        rates_flu = np.clip(rates_flu, -np.asarray(rate_max), rate_max)
        roll, pitch, yaw = rates_flu_to_channels(rates_flu, self.rates)
        throttle = int(round(RC_MIN_US + 1000.0 * self.throttle_stick(thrust)))
        self.channels[:4] = [roll, pitch, throttle, yaw]
        return {"thrust": thrust, "rate_frd_rad_s": [float(r) for r in frames.flu_to_frd(rates_flu)],
                "channels_us": list(self.channels[:4])}

    def _set_arm_switch(self, on: bool) -> None:
        self.channels[self.arm_channel] = self.arm_us if on else RC_MIN_US

    def start_offboard(self, send_hold, timeout_s: float | None = None) -> None:
        """Streams throttle-low sticks, then raises the ARM switch; raises LinkError with Betaflight's
        arming-disable reasons if it will not arm."""
        deadline = time.monotonic() + (timeout_s or self.arm_timeout_s)
        while not self.armed and time.monotonic() < deadline:
            self._try_arm(send_hold, deadline)
        if not self.armed:
            self._set_arm_switch(False)
            reasons = ", ".join(self.status.get("arming_disabled", [])) or "unknown"
            raise LinkError(f"Betaflight refused to arm (arming disabled: {reasons}): see the Configurator's "
                            "Setup tab or `status` in the CLI")
        time.sleep(0.1)
        if self._motors is not None:                 # motors at idle, throttle low: measure the idle
            self.idle_frac = float(np.clip(np.min(self._motors), 0.0, 0.3))

    def _try_arm(self, send_hold, deadline: float) -> None:
        """Switch low until Betaflight reports nothing blocking for 0.3 s, then high for up to 1 s (a
        glitch while it rises leaves NOT_DISARMED: the next try lowers the switch again)."""
        self._set_arm_switch(False)
        ready_since = None
        while time.monotonic() < deadline and (ready_since is None or time.monotonic() - ready_since < 0.3):
            send_hold()
            self.channels[2] = RC_MIN_US
            status = self.status
            ready = status and status["arming_disable_bits"] & ~ARM_SWITCH_ONLY == 0
            ready_since = (ready_since or time.monotonic()) if ready else None
            time.sleep(0.02)
        self._set_arm_switch(True)
        give_up = min(deadline, time.monotonic() + 1.0)
        while not self.armed and time.monotonic() < give_up:
            send_hold()
            self.channels[2] = RC_MIN_US
            time.sleep(0.02)

    def land_and_disarm(self, timeout_s: float = 30.0, on_tick=None) -> bool:
        """Betaflight has no LAND: descend at the pose source's vertical speed of -0.4 m/s by
        throttle (a small P loop on the vertical speed), level sticks, and lower the ARM switch once
        on the ground. Without a pose, it lowers the throttle gently and disarms after timeout_s.
        `on_tick()` is called every 20 ms meanwhile (errors logged, never raised)."""
        deadline = time.monotonic() + timeout_s
        still_since = None
        self.channels[0] = self.channels[1] = self.channels[3] = RC_MID_US
        while self.armed and time.monotonic() < deadline:
            state = self.latest_state()
            now = time.monotonic()
            call_quietly(on_tick)
            if state is None:
                self.channels[2] = max(RC_MIN_US, self.channels[2] - 2)
            else:
                vz = float(state["vel_enu_m_s"][2])
                step = int(round(np.clip((-0.4 - vz) * 20.0, -5, 5)))
                self.channels[2] = int(np.clip(self.channels[2] + step, RC_MIN_US, RC_MAX_US))
                on_ground = state["pos_enu_m"][2] < self.ground_z_enu_m + 0.15 and abs(vz) < 0.1
                still_since = (still_since or now) if on_ground else None
                if still_since and now - still_since > 0.5:
                    break
            time.sleep(0.02)
        self.disarm()
        return not self.armed

    def disarm(self, force: bool = False) -> None:
        self.channels[2] = RC_MIN_US
        self._set_arm_switch(False)
        deadline = time.monotonic() + 1.0
        while self.armed and time.monotonic() < deadline and self.transport is not None:
            time.sleep(0.02)

