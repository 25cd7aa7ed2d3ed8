"""The MAVLink link to a flight controller (ArduPilot in GUIDED_NOGPS, PX4 in OFFBOARD), over
UDP, TCP or serial with pymavlink.

    with MavLink(parse_connection("udpin:0.0.0.0:14550"), autopilot="auto") as link:
        link.wait_for_state()
        link.start_offboard(send_hold)          # arms and enters the offboard mode
        link.send_action(action, shadow)        # per control tick
        link.land_and_disarm()

A receiver thread keeps the newest state, converted once through skyloop/frames.py into the sim's
frames (pos/vel ENU, attitude body FLU -> world ENU, body rates FLU), stamped with the monotonic
time it arrived. We announce ourselves as an onboard controller (1 Hz heartbeat) and measure the
link's round trip with TIMESYNC. Leaving the `with` block always ends with the vehicle disarmed
(after LAND if it was flying).

`lockstep=True` (the built-in simulated vehicle in lockstep, `skyloop sitl --speed lockstep`):
the link's clock (LockstepClock) is the vehicle's sim time, which passes only when the link
advances it; every message is stamped with that time instead of the monotonic clock, so the
runner's checks (stale telemetry, link loss, the landing's waits) are judged in sim time.
"""
from __future__ import annotations

import logging
import os
import threading
import time

import numpy as np

from flight import ardupilot_params
from flight.ardupilot_params import GUID_TIMEOUT_S  # noqa: F401  (the runner's setpoint timeout, re-exported)
from flight.command import ctbr_command
from flight.connection import Connection
from flight.linkbase import CATCH_UP_AFTER_S, CATCH_UP_WAIT_S, LinkBase, LinkError, call_quietly
from skyloop import frames
from skyloop.autopilot import FORCE_DISARM_MAGIC, LANDING, MODES, OFFBOARD, mode_name
from skyloop.rowlog import LogFile

log = logging.getLogger(__name__)
os.environ.setdefault("MAVLINK20", "1")          # pymavlink reads this at import: MAVLink 2 framing
from pymavlink import mavutil  # noqa: E402

mav = mavutil.mavlink
TYPE_MASK_RATES_THRUST = 128                     # SET_ATTITUDE_TARGET: ignore the attitude
#: HEARTBEAT at 10 Hz: the mode (and so the vehicle's own failsafe) is read from every one of them
STREAMS_HZ = {"LOCAL_POSITION_NED": 100, "ATTITUDE_QUATERNION": 100, "SYS_STATUS": 5, "BATTERY_STATUS": 5,
              "ESC_TELEMETRY_1_TO_4": 20, "HEARTBEAT": 10, "SERVO_OUTPUT_RAW": 20}
ARM_TRIES, ARM_RETRY_S = 3, 1.0                  # arm at most this often, this far apart
DISARM_RETRY_S = 2.0
STREAM_REQUEST_S = 1.0                           # a stream-rate request: sent up to 3 times within this
# lockstep: the vehicle answers a clock advance at once; none within LOCKSTEP_ANSWER_S (wall time, the request
# sent again every LOCKSTEP_RETRY_S for a lossy link) and the clock goes on without it (LockstepClock)
LOCKSTEP_ANSWER_S, LOCKSTEP_RETRY_S = 1.0, 0.05


class LockstepClock:
    """The simulated vehicle's time, for a vehicle in lockstep: it passes only when the link says.
    sleep_until(t) sends SYSTEM_TIME t (the vehicle steps up to t, sending the telemetry that falls
    due) and a TIMESYNC behind it, and waits for its answer: then everything the vehicle sent up
    to t has arrived. No sleeps: as fast as the CPU allows, and the same flight on a busy machine.

    A lost link: a vehicle that does not answer within LOCKSTEP_ANSWER_S (wall time) is silent and
    the time passes without it (the runner asked for it to pass; a vehicle that still hears us
    steps on). While silent the clock waits only as long as the time it advances (real-time
    pace) until an answer comes back, so a lost link is judged as in real time: no new telemetry
    for Limits.stale_telemetry_s of the runner's time is stale telemetry; the vehicle, meanwhile,
    sees time pass only as far as the link's clock messages reach it."""
    lockstep = True

    def __init__(self, link: "MavLink"):
        self.link, self.now_s, self.silent = link, 0.0, False

    def now(self) -> float:
        return self.now_s

    def sleep(self, seconds: float) -> None:
        self.sleep_until(self.now_s + seconds)

    def sleep_until(self, t_s: float) -> float:
        """Advances the vehicle to t_s and waits for it; returns 0.0 (lockstep is never late)."""
        t_s = max(t_s, self.now_s)
        wait_s = t_s - self.now_s if self.silent else max(LOCKSTEP_ANSWER_S, t_s - self.now_s)
        answer_s = self.link.advance_vehicle(t_s, wait_s)
        self.silent = answer_s is None
        self.now_s = max(t_s, answer_s or 0.0)
        return 0.0


class MavLink(LinkBase):
    def __init__(self, connection: Connection, autopilot: str = "auto", action_mode: str = "ctbr",
                 rate_max_rad_s=(10.0, 10.0, 5.0), heartbeat_timeout_s: float = 10.0, tlog_path: str | None = None,
                 set_params: bool = False, lockstep: bool = False):
        self.connection, self.autopilot_wanted, self.action_mode = connection, autopilot, action_mode
        self.set_params = set_params               # the user's consent to change the vehicle's parameters
        self.status_texts: list[tuple[float, str]] = []   # the vehicle's STATUSTEXT (time, text), newest last
        self._outputs = None                       # SERVO_OUTPUT_RAW of motors 1..4, 0..1
        self.spool_s = 1.2                         # after the motors come live, until they have full authority
        self.rate_max_rad_s = np.asarray(rate_max_rad_s, float)
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.master = None
        self.autopilot = None                      # "ardupilot" or "px4" once the heartbeat says
        self.last_heartbeat_s: float | None = None
        self.armed = False
        self.custom_mode = 0
        self._offboard_mode = None                 # the mode we put it in, once its heartbeat showed it
        self.battery_v: float | None = None
        self.cells: int | None = None
        self.hover_throttle: float | None = None
        self.ground_z_enu_m = 0.0
        self._rtt_s: list[float] = []
        self._pos = self._att = None              # (t_s, values) of the newest messages
        self._rpm = None
        self._params: dict[str, float] = {}
        self._acks: dict[int, int] = {}
        self._lock = threading.Lock()
        self._news = threading.Condition(self._lock)   # notified on every new position or attitude
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._t0_s, self._opened_epoch_s = time.monotonic(), time.time()
        self.lockstep = lockstep
        self.clock = LockstepClock(self) if lockstep else self.clock
        self._vehicle_time_s = 0.0                 # lockstep: the vehicle's sim time, from its newest TIMESYNC answer
        self._synced_ns = 0                        # lockstep: ts1 of the newest TIMESYNC answered
        # every message both ways, as MAVProxy logs; a full disk never raises here (skyloop/rowlog.py LogFile)
        self._tlog = LogFile(tlog_path) if tlog_path else None
        self._tlog_lock = threading.Lock()

    # ---------------------------------------------------------------- connect / close
    def connected(self) -> bool:
        return self.master is not None

    def open(self) -> None:
        c = self.connection
        try:
            self.master = mavutil.mavlink_connection(c.url, baud=c.baud or 57600, source_system=255,
                                                     source_component=mav.MAV_COMP_ID_ONBOARD_COMPUTER,
                                                     autoreconnect=c.kind == "tcp")
        except Exception as exc:   # pymavlink raises OSError, SerialException, socket errors...
            raise LinkError(f"cannot open {c}: {exc}") from None
        if self._tlog is not None:
            self.master.mav.set_send_callback(self._log_message)
        self._send_heartbeat()
        deadline = time.monotonic() + self.heartbeat_timeout_s
        hb = None
        while time.monotonic() < deadline and hb is None:
            self._send_heartbeat()
            hb = self.master.recv_match(type="HEARTBEAT", blocking=True, timeout=0.5)
            if hb is not None and hb.type in (mav.MAV_TYPE_GCS, mav.MAV_TYPE_ONBOARD_CONTROLLER):
                hb = None                          # another ground station, not the vehicle
        if hb is None:
            self.close()
            raise LinkError(f"no heartbeat from a vehicle on {c} in {self.heartbeat_timeout_s:g} s: is it powered, "
                            "is the connection string right (udpin: listens, udpout: sends), is the baud rate right?")
        self.autopilot = "px4" if hb.autopilot == mav.MAV_AUTOPILOT_PX4 else "ardupilot"
        if self.autopilot_wanted not in ("auto", self.autopilot):
            self.close()
            raise LinkError(f"--autopilot {self.autopilot_wanted} asked for, but the vehicle's heartbeat says "
                            f"{self.autopilot}: use --autopilot auto or {self.autopilot}")
        self._on_heartbeat(hb)
        self.target = (self.master.target_system, self.master.target_component or 1)
        for fn in (self._receive_loop, self._heartbeat_loop):
            t = threading.Thread(target=fn, daemon=True, name=fn.__name__)
            t.start()
            self._threads.append(t)
        # each stream rate until acknowledged (a lossy link loses requests: a lost HEARTBEAT one left it at 1 Hz)
        unanswered = [name for name, hz in STREAMS_HZ.items()
                      if self._command(mav.MAV_CMD_SET_MESSAGE_INTERVAL, getattr(mav, f"MAVLINK_MSG_ID_{name}"),
                                       1e6 / hz, timeout_s=STREAM_REQUEST_S) is None]
        if unanswered:
            log.warning("the vehicle did not acknowledge the stream rates asked for %s: they may be slower",
                        ", ".join(unanswered))
        if self.lockstep:
            if self.advance_vehicle(0.0, self.heartbeat_timeout_s) is None:
                self.close()
                raise LinkError(f"lockstep: the vehicle on {c} did not answer a clock tick (SYSTEM_TIME + TIMESYNC) "
                                f"in {self.heartbeat_timeout_s:g} s: lockstep needs the built-in simulated vehicle "
                                "started with --speed lockstep (fly --lockstep starts one)")
            self.clock.now_s = self._vehicle_time_s
        if self.autopilot == "ardupilot":
            try:
                ardupilot_params.check(self)
            except BaseException:                  # refused: let go of the port (a TCP serial takes one client)
                self.close()
                raise
        log.info("connected to %s on %s (system %d)", self.autopilot, self.connection, self.target[0])

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=1.0)
        if self.master is not None:
            self.master.close()
            self.master = None
        if self._tlog is not None:
            with self._tlog_lock:
                self._tlog.close()

    def _log_message(self, msg) -> None:
        """A .tlog record: big-endian microseconds since the epoch, then the message as on the wire
        (lockstep: the link's opening time plus the sim time, so the log's time axis is the flight's)."""
        stamp_s = self._opened_epoch_s + self.clock.now() if self.lockstep else time.time()
        with self._tlog_lock:
            self._tlog.write(int(stamp_s * 1e6).to_bytes(8, "big") + msg.get_msgbuf())

    def describe(self) -> dict:
        return {"connection": str(self.connection), "autopilot": self.autopilot, "action_mode": self.action_mode,
                "clock": "lockstep" if self.lockstep else "real time"}

    def log_fault(self) -> str | None:
        """What went wrong writing the .tlog (a full disk), or None."""
        return self._tlog.report() if self._tlog is not None else None

    # ---------------------------------------------------------------- threads
    def _send_heartbeat(self) -> None:
        self.master.mav.heartbeat_send(mav.MAV_TYPE_ONBOARD_CONTROLLER, mav.MAV_AUTOPILOT_INVALID, 0, 0,
                                       mav.MAV_STATE_ACTIVE)

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self._send_heartbeat()
                self.master.mav.timesync_send(0, time.monotonic_ns())
            except (OSError, AttributeError):
                pass

    def _receive_loop(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self.master.recv_match(blocking=True, timeout=0.05)
            except (OSError, AttributeError, ValueError) as exc:
                log.debug("receive: %s", exc)
                time.sleep(0.01)
                continue
            if msg is None:
                continue
            if self._tlog is not None and msg.get_type() != "BAD_DATA":
                self._log_message(msg)
            # the time it arrived: monotonic, or in lockstep the vehicle's sim time as it last told us
            self._handle(msg, self._vehicle_time_s if self.lockstep else time.monotonic())

    def _handle(self, msg, now: float) -> None:
        kind = msg.get_type()
        if msg.get_srcSystem() != getattr(self, "target", (msg.get_srcSystem(),))[0]:
            return
        if kind != "BAD_DATA":
            self.last_message_s = now
        if kind == "HEARTBEAT":
            if msg.type not in (mav.MAV_TYPE_GCS, mav.MAV_TYPE_ONBOARD_CONTROLLER):
                self._on_heartbeat(msg, now)
        elif kind == "LOCAL_POSITION_NED":
            pos = frames.ned_to_enu([msg.x, msg.y, msg.z])
            vel = frames.ned_to_enu([msg.vx, msg.vy, msg.vz])
            with self._news:
                self._pos = (now, pos, vel)
                self._news.notify_all()
        elif kind == "ATTITUDE_QUATERNION":
            q = frames.quat_ned_frd_to_enu_flu([msg.q1, msg.q2, msg.q3, msg.q4])
            w = frames.frd_to_flu([msg.rollspeed, msg.pitchspeed, msg.yawspeed])
            with self._news:
                self._att = (now, q, w)
                self._news.notify_all()
        elif kind == "SYS_STATUS" and msg.voltage_battery not in (0, 65535):
            self.battery_v = msg.voltage_battery / 1000.0
        elif kind == "BATTERY_STATUS":
            cells = [v for v in msg.voltages if v not in (0, 65535, -1)]
            if cells:
                self.cells = len(cells) if len(cells) > 1 else self.cells
        elif kind == "ESC_TELEMETRY_1_TO_4":
            self._rpm = np.array(msg.rpm[:4], float)
        elif kind == "TIMESYNC" and msg.tc1 != 0:
            rtt = (time.monotonic_ns() - msg.ts1) / 1e9
            if 0 <= rtt < 5:
                self._rtt_s = (self._rtt_s + [rtt])[-50:]
            if self.lockstep:                      # the vehicle's sim time, once it handled all we sent before
                with self._news:
                    self._synced_ns = max(self._synced_ns, msg.ts1)
                    self._vehicle_time_s = max(self._vehicle_time_s, msg.tc1 / 1e9)
                    self._news.notify_all()
        elif kind == "COMMAND_ACK":
            self._acks[msg.command] = msg.result
        elif kind == "STATUSTEXT":
            text = msg.text if isinstance(msg.text, str) else msg.text.decode(errors="replace")
            text = text.rstrip("\x00")
            self.status_texts = (self.status_texts + [(now, text)])[-50:]
            log.log(logging.WARNING if msg.severity <= mav.MAV_SEVERITY_WARNING else logging.INFO, "vehicle: %s", text)
        elif kind == "SERVO_OUTPUT_RAW":
            pwm = np.array([msg.servo1_raw, msg.servo2_raw, msg.servo3_raw, msg.servo4_raw], float)
            self._outputs = np.clip((pwm - 1000.0) / 1000.0, 0.0, 1.0)
        elif kind == "PARAM_VALUE":
            self._params[msg.param_id.rstrip("\x00") if isinstance(msg.param_id, str) else
                         msg.param_id.decode().rstrip("\x00")] = float(msg.param_value)

    def _on_heartbeat(self, msg, now: float | None = None) -> None:
        self.last_heartbeat_s = now if now is not None else self.clock.now()
        self.armed = bool(msg.base_mode & mav.MAV_MODE_FLAG_SAFETY_ARMED)
        self.custom_mode = msg.custom_mode
        if self._offboard_mode == ("wanted", msg.custom_mode):
            self._offboard_mode = msg.custom_mode      # it is in the offboard mode: from now on, leaving it counts

    @property
    def fc_failsafe(self) -> str | None:
        """The vehicle's own failsafe, as the runner's failsafe reason: it left the offboard mode we
        put it in (its setpoint timeout, battery failsafe, or a pilot's mode switch), so the policy's
        commands no longer fly it."""
        wanted = self._offboard_mode
        if not isinstance(wanted, int) or self.custom_mode == wanted:
            return None
        return (f"the vehicle left {self.mode_name_of(wanted)} for {self.mode_name()} (its own failsafe, e.g. "
                "setpoints arriving too late or a low battery, or a mode switch on the radio)")

    # ---------------------------------------------------------------- state
    def latest_state(self) -> dict | None:
        """The newest state. One older than CATCH_UP_AFTER_S waits (up to CATCH_UP_WAIT_S) for the
        reader thread first: after a stall of this process (a busy machine, a debugger) what the
        vehicle sent meanwhile is still in the socket, and the control loop, resumed first, would
        judge its own silence as the vehicle's ("stale telemetry"; measured on real ArduPilot)."""
        with self._news:
            if (not self.lockstep and self._pos is not None and self._att is not None and self._threads
                    and self._threads[0].is_alive()   # the reader
                    and time.monotonic() - min(self._pos[0], self._att[0]) > CATCH_UP_AFTER_S):
                before = (self._pos[0], self._att[0])
                self._news.wait_for(lambda: self._pos[0] > before[0] and self._att[0] > before[1],
                                    timeout=CATCH_UP_WAIT_S)
            pos, att = self._pos, self._att
        if pos is None or att is None:
            return None
        return {"t_s": min(pos[0], att[0]), "pos_enu_m": pos[1], "vel_enu_m_s": pos[2], "quat_wxyz": att[1],
                "omega_flu_rad_s": att[2], "rpm": self._rpm}

    def mode_name(self) -> str:
        return mode_name(self.autopilot or "ardupilot", self.custom_mode)

    def advance_vehicle(self, t_s: float, wait_s: float) -> float | None:
        """Lockstep: SYSTEM_TIME t_s (the vehicle steps up to it), then a TIMESYNC behind it, both sent
        again every LOCKSTEP_RETRY_S; returns the vehicle's time from the answer (everything it sent
        before has arrived by then), or None when none came within wait_s (wall time)."""
        deadline = time.monotonic() + wait_s
        while True:
            self.master.mav.system_time_send(0, int(round(t_s * 1000)) & 0xFFFFFFFF)
            ts1 = time.monotonic_ns()              # after the SYSTEM_TIME: a TIMESYNC from ts1 on is answered after it
            self.master.mav.timesync_send(0, ts1)
            with self._news:
                if self._news.wait_for(lambda: self._synced_ns >= ts1,
                                       timeout=max(0.0, min(LOCKSTEP_RETRY_S, deadline - time.monotonic()))):
                    return self._vehicle_time_s
            if time.monotonic() >= deadline:
                return None

    # ---------------------------------------------------------------- commands
    def _command(self, command: int, *params, wait: bool = True, timeout_s: float = 2.0,
                 tries: int = 3) -> int | None:
        """COMMAND_LONG, sent again (confirmation 1, 2, ...) when no COMMAND_ACK comes back within
        timeout_s / tries: a lossy link loses commands and acks. Returns the result, or None."""
        p = list(params) + [0.0] * (7 - len(params))
        self._acks.pop(command, None)
        for confirmation in range(tries if wait else 1):
            self.master.mav.command_long_send(self.target[0], self.target[1], command, confirmation, *p)
            if not wait:
                return None
            deadline = time.monotonic() + timeout_s / tries
            while time.monotonic() < deadline:
                if command in self._acks:
                    return self._acks.pop(command)
                time.sleep(0.005)
        return None

    def _param(self, name: str, timeout_s: float = 2.0) -> float | None:
        return ardupilot_params.read(self, name, timeout_s)

    def motor_outputs(self):
        """The newest motor outputs 1..4 (SERVO_OUTPUT_RAW, 0..1 of 1000..2000 us), or None."""
        return self._outputs

    def vehicle_messages(self, since_s: float = 0.0) -> list[str]:
        """The vehicle's STATUSTEXT since `since_s` (monotonic), oldest first."""
        return [text for t, text in self.status_texts if t >= since_s]

    def _reasons(self, since_s: float) -> str:
        texts = list(dict.fromkeys(self.vehicle_messages(since_s - 30.0)))   # its pre-arm messages too, once each
        return ("; it said: " + " | ".join(texts[-8:])) if texts else "; it sent no messages (STATUSTEXT) saying why"

    def _set_mode(self, custom_mode: int, wait: bool = True) -> bool:
        if self.autopilot == "px4":                # main mode, sub mode
            main, sub = (custom_mode >> 16) & 0xFF, (custom_mode >> 24) & 0xFF
        else:
            main, sub = custom_mode, 0
        result = self._command(mav.MAV_CMD_DO_SET_MODE, mav.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED, main, sub, wait=wait)
        return result == mav.MAV_RESULT_ACCEPTED

    def start_offboard(self, send_hold, timeout_s: float = 5.0) -> None:
        """Streams the hold setpoint, enters GUIDED_NOGPS / OFFBOARD and arms; raises LinkError if refused."""
        offboard = MODES[self.autopilot][OFFBOARD[self.autopilot]]
        self._offboard_mode = ("wanted", offboard)
        clock = self.clock
        start = clock.now()
        while clock.now() - start < 1.2:               # PX4 wants a setpoint stream before OFFBOARD
            send_hold()
            clock.sleep(0.02)
        asked = clock.now()
        if not self._set_mode(offboard):
            raise LinkError(f"the vehicle refused {self.mode_name_of(offboard)} (check its position estimate and RC "
                            f"failsafe settings){self._reasons(asked)}")
        result = None
        for attempt in range(ARM_TRIES):               # a refusal is answered at once: wait before asking again
            tried = clock.now()
            send_hold()
            result = self._command(mav.MAV_CMD_COMPONENT_ARM_DISARM, 1, timeout_s=min(timeout_s, ARM_RETRY_S))
            if result == mav.MAV_RESULT_ACCEPTED:
                break
            while attempt + 1 < ARM_TRIES and clock.now() < tried + ARM_RETRY_S:
                send_hold()
                clock.sleep(0.02)
        if result != mav.MAV_RESULT_ACCEPTED:
            raise LinkError(f"the vehicle refused to arm {ARM_TRIES} times{self._reasons(asked)}")
        self.armed = True

    def mode_name_of(self, custom_mode: int) -> str:
        saved, self.custom_mode = self.custom_mode, custom_mode
        try:
            return self.mode_name()
        finally:
            self.custom_mode = saved

    def send_action(self, action, shadow) -> dict:
        """Sends one policy action; returns what was sent, for the flight log."""
        t_ms = int((time.monotonic() - self._t0_s) * 1000) & 0xFFFFFFFF
        if self.action_mode == "ctbr":
            thrust, rates_flu = ctbr_command(action, shadow.hover_action, self.rate_max_rad_s, self.hover_throttle)
            rates_frd = frames.flu_to_frd(rates_flu)
            self.master.mav.set_attitude_target_send(t_ms, self.target[0], self.target[1], TYPE_MASK_RATES_THRUST,
                                                     [1.0, 0.0, 0.0, 0.0], *[float(r) for r in rates_frd], thrust)
            return {"thrust": thrust, "rate_frd_rad_s": [float(r) for r in rates_frd]}
        motors = np.clip((np.asarray(action, float) + 1.0) / 2.0, 0.0, 1.0)
        self.master.mav.set_actuator_control_target_send(t_ms * 1000, 0, self.target[0], self.target[1],
                                                         list(motors) + [0.0] * 4)
        return {"motors": motors.tolist()}

    def land_and_disarm(self, timeout_s: float = 30.0, on_tick=None) -> bool:
        """LAND, then wait for the autopilot to disarm on the ground (or disarm it once it has stood
        still within 0.3 m of where it took off for 1.5 s). Never forces a disarm in the air: if the
        vehicle is not down in timeout_s, or telemetry is gone, it is left landing under its own
        failsafe and this returns False. `on_tick()` is called every 50 ms meanwhile (the runner logs
        the landing with it; its errors are logged, never raised)."""
        if self.master is None:
            return not self.armed
        land = MODES[self.autopilot][LANDING[self.autopilot]]
        clock = self.clock                             # lockstep: the vehicle's time, advanced as it lands
        clock.sleep(0.0)                               # lockstep: what the vehicle sent so far has arrived
        deadline = clock.now() + timeout_s
        still_since, next_land, next_disarm = None, 0.0, 0.0
        while self.armed and clock.now() < deadline:
            now = clock.now()
            if now >= next_land and self.custom_mode != land:   # repeat LAND until the vehicle reports it
                self._set_mode(land, wait=False)
                next_land = now + 1.0
            state = self.latest_state()
            call_quietly(on_tick)
            if state is None or now - state["t_s"] > 3.0:
                if now - (self.last_message_s or 0.0) > 3.0:
                    log.warning("no telemetry while landing: LAND was sent; the vehicle lands under its own "
                                "failsafe. Watch it, and disarm it from the RC or a ground station if needed")
                    return False
            elif state["pos_enu_m"][2] < self.ground_z_enu_m + 0.3 and abs(state["vel_enu_m_s"][2]) < 0.05:
                still_since = still_since or now
                if now - still_since > 1.5:
                    if now >= next_disarm:            # once, then give its heartbeat time to show it
                        self.disarm()
                        next_disarm = now + DISARM_RETRY_S
            else:
                still_since = None
            clock.sleep(0.05)
        if self.armed:
            log.warning("the vehicle is still armed %.0f s after LAND: it keeps landing on its own; watch it", timeout_s)
        return not self.armed

    def disarm(self, force: bool = False) -> None:
        if self.master is None:
            return
        self._command(mav.MAV_CMD_COMPONENT_ARM_DISARM, 0, FORCE_DISARM_MAGIC if force else 0, timeout_s=1.0)
