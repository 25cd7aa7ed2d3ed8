"""A flight controller as the stand's electronics, over MAVLink (pymavlink).

Throttle: MAV_CMD_DO_MOTOR_TEST (209) on one output, in percent, resent every KEEPALIVE_S with a
short timeout (param4) so the flight controller stops the motor by itself if this process goes
quiet. Rotor speed, voltage and current: ESC telemetry, ArduPilot's ESC_TELEMETRY_1_TO_4 (rpm,
voltage in cV, current in cA) or ESC_STATUS (291: rpm, voltage in V, current in A), requested at
ESC_RATE_HZ with MAV_CMD_SET_MESSAGE_INTERVAL. Thrust (and torque): a serial load cell speaking
PROTOCOL.md. One row per load-cell sample, with the latest ESC telemetry (sample and hold).

The link is lost, and throttle 0 commanded, when either the load cell or the flight controller is
silent for more than loss_timeout_s.
"""
from __future__ import annotations

import logging
import math
import os
import time

from thrust_stand.driver import StandDriver, StandError, StandLinkLost
from thrust_stand.protocol import Sample
from thrust_stand.serial_stand import SerialStand

log = logging.getLogger(__name__)

MAV_CMD_DO_MOTOR_TEST = 209
MAV_CMD_SET_MESSAGE_INTERVAL = 511
MOTOR_TEST_THROTTLE_PERCENT = 0
MOTOR_TEST_ORDER_BOARD = 2          # param1 is the board's output number
ESC_STATUS_ID = 291
ESC_TELEMETRY_1_TO_4_ID = 11030     # then 11031 for 5..8, 11032 for 9..12
KEEPALIVE_S = 0.1
MOTOR_TEST_TIMEOUT_S = 1.0
ESC_RATE_HZ = 50
HEARTBEAT_WAIT_S = 5.0
MAV_RESULT_ACCEPTED, MAV_RESULT_IN_PROGRESS = 0, 5


def mavlink2_connection(connection: str, **kwargs):
    """A pymavlink connection speaking MAVLink 2 with the ardupilotmega dialect (ESC telemetry has
    message ids above 255, which MAVLink 1 cannot carry). pymavlink reads MAVLINK20 from the
    environment, so it is set for this process."""
    from pymavlink import mavutil
    os.environ["MAVLINK20"] = "1"
    return mavutil.mavlink_connection(connection, dialect="ardupilotmega", **kwargs)


def motor_test_args(motor: int, throttle: float, timeout_s: float = MOTOR_TEST_TIMEOUT_S) -> tuple:
    """COMMAND_LONG (command, confirmation, param1..7) for `throttle` (0..1) on output `motor`."""
    return (MAV_CMD_DO_MOTOR_TEST, 0, float(motor), float(MOTOR_TEST_THROTTLE_PERCENT), 100.0 * throttle,
            float(timeout_s), 1.0, float(MOTOR_TEST_ORDER_BOARD), 0.0)


def esc_reading(msg, motor: int) -> dict | None:
    """{'rpm', 'voltage_v', 'current_a'} of `motor` (1-based) from an ESC telemetry message, or None."""
    group, i = divmod(motor - 1, 4)
    kind = msg.get_type()
    if kind == f"ESC_TELEMETRY_{4 * group + 1}_TO_{4 * group + 4}":
        return {"rpm": float(msg.rpm[i]), "voltage_v": msg.voltage[i] / 100.0, "current_a": msg.current[i] / 100.0}
    if kind == "ESC_STATUS" and msg.index == 4 * group:
        return {"rpm": float(msg.rpm[i]), "voltage_v": float(msg.voltage[i]), "current_a": float(msg.current[i])}
    return None


class MavlinkStand(StandDriver):
    kind = "mavlink"

    def __init__(self, connection: str, load_cell: str, *, motor: int = 1, max_throttle: float = 1.0,
                 loss_timeout_s: float = 0.25):
        super().__init__(max_throttle=max_throttle, loss_timeout_s=loss_timeout_s)
        if motor < 1:
            raise ValueError(f"motor output {motor}: outputs count from 1")
        self.connection, self.motor = connection, motor
        self.load_cell = SerialStand(load_cell, max_throttle=0.0, loss_timeout_s=loss_timeout_s, role="load cell")
        self.counters = self.load_cell.counters       # the link counters are the load cell's
        self._mav = None
        self._target = (1, 1)
        self._esc = {"rpm": math.nan, "voltage_v": math.nan, "current_a": math.nan}
        self._armed = self._streaming = False
        self._last_tx_s = self._last_fc_s = 0.0

    def open(self) -> None:
        try:
            self._mav = mavlink2_connection(self.connection, source_system=255, source_component=190,
                                            autoreconnect=False)
        except Exception as exc:       # pymavlink raises plain Exceptions for bad connection strings
            raise StandError(f"cannot open MAVLink connection {self.connection!r}: {exc}") from None
        hb = self._mav.wait_heartbeat(timeout=HEARTBEAT_WAIT_S)
        if hb is None:
            raise StandError(f"no HEARTBEAT from a flight controller on {self.connection} within {HEARTBEAT_WAIT_S:g} s")
        self._target = (hb.get_srcSystem(), hb.get_srcComponent())
        group = (self.motor - 1) // 4
        for msg_id in (ESC_TELEMETRY_1_TO_4_ID + group, ESC_STATUS_ID):
            self._command(MAV_CMD_SET_MESSAGE_INTERVAL, 0, float(msg_id), 1e6 / ESC_RATE_HZ, 0, 0, 0, 0, 0)
        self.load_cell.open()
        self.info = {"connection": self.connection, "motor_output": self.motor, "fc_system": self._target[0],
                     "fc_autopilot": int(hb.autopilot), "load_cell": self.load_cell.describe(),
                     "fw": f"mavlink autopilot {int(hb.autopilot)}",
                     "max_rate_hz": self.load_cell.info.get("max_rate_hz")}

    def close(self) -> None:
        self.load_cell.close()
        if self._mav is not None:
            self._mav.close()
            self._mav = None

    def _command(self, command: int, confirmation: int, *params) -> None:
        self._mav.mav.command_long_send(self._target[0], self._target[1], command, confirmation, *params)
        self._last_tx_s = time.monotonic()

    def tare(self) -> None:
        self.load_cell.tare()

    def start_streaming(self, rate_hz: float) -> None:
        self.load_cell.start_streaming(rate_hz)
        self._streaming = True
        self._last_fc_s = time.monotonic()

    def arm(self, rate_hz: float) -> None:
        self.start_streaming(rate_hz)
        self._armed = True           # a motor test needs no arming; it runs on a disarmed vehicle

    def _send_throttle(self, throttle: float) -> None:
        if not self._armed:
            raise StandError("set_throttle before arm()")
        self._command(*motor_test_args(self.motor, throttle))

    def _poll_fc(self) -> None:
        while True:
            msg = self._mav.recv_match(blocking=False)
            if msg is None:
                return
            if msg.get_srcSystem() != self._target[0]:
                continue
            self._last_fc_s = time.monotonic()
            reading = esc_reading(msg, self.motor)
            if reading is not None:
                self._esc = reading
            elif msg.get_type() == "COMMAND_ACK" and msg.command == MAV_CMD_DO_MOTOR_TEST and \
                    msg.result not in (MAV_RESULT_ACCEPTED, MAV_RESULT_IN_PROGRESS):
                raise StandError(f"the flight controller refused the motor test (MAV_RESULT {msg.result}): is it "
                                 "disarmed, the safety switch off, and the output a motor?")

    def read_samples(self, timeout_s: float = 0.02) -> list[Sample]:
        now = time.monotonic()
        try:
            if self._armed and now - self._last_tx_s >= KEEPALIVE_S:
                self._command(*motor_test_args(self.motor, self.throttle))
            self._poll_fc()
            if self._streaming and now - self._last_fc_s > self.loss_timeout_s:
                raise StandLinkLost(f"no MAVLink message from the flight controller for "
                                    f"{(now - self._last_fc_s) * 1000:.0f} ms: throttle 0 commanded")
            cell = self.load_cell.read_samples(timeout_s)
        except (StandError, OSError):
            self.stop()
            raise
        esc = self._esc
        return [Sample(s.seq, s.t_us, self.throttle, math.nan, esc["rpm"], s.thrust_n, s.torque_nm,
                       esc["voltage_v"] if math.isfinite(esc["voltage_v"]) else s.voltage_v,
                       esc["current_a"] if math.isfinite(esc["current_a"]) else s.current_a) for s in cell]

    def stop(self) -> None:
        """Motor test at 0 % (twice: UDP may drop one); never raises."""
        self._armed = False
        self.throttle = 0.0
        if self._mav is None:
            return
        for _ in range(2):
            try:
                self._command(*motor_test_args(self.motor, 0.0, timeout_s=0.0))
            except Exception as exc:       # a serial FC link that is gone raises plain OSErrors or SerialException
                log.warning("could not command throttle 0 to the flight controller: %s", exc)
                return
