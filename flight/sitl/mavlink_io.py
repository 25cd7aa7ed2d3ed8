"""The simulated vehicle's MAVLink side: the connection, the messages it takes (commands,
parameters, setpoints) and the ones it sends. See flight/sitl/__init__.py for the behaviour."""
from __future__ import annotations

import logging
import math

import numpy as np

from flight.connection import parse_connection
from flight.service import Service, Worker
from flight.sitl import clock, telemetry
from flight.sitl.mavlink_dialect import mav, mavutil
from flight.sitl.telemetry import DEFAULT_RATES_HZ
from flight.sitl.vehicle import Setpoint, Vehicle, param_problem
from sim.profiles import Profile
from skyloop import frames
from skyloop.autopilot import FORCE_DISARM_MAGIC, OFFBOARD_MODES
from skyloop.frames import MOTOR_ORDERS

log = logging.getLogger(__name__)


class SitlVehicle(Vehicle, Service):
    """The simulated vehicle on a MAVLink connection. Attributes safe to read from other threads:
    armed, mode, failsafe, failsafe_t_s, sim_time_s, params (a dict; writing a value changes the
    vehicle), counters."""

    def __init__(self, profile: str | Profile = "crazyflie21", listen: str = "udpin:127.0.0.1:14550",
                 autopilot: str = "ardupilot", *args, **kwargs):
        self.connection = parse_connection(listen)       # ConnectionStringError lists the valid forms
        super().__init__(profile, autopilot, *args, **kwargs)
        self.downlink = True
        self.counters = {"messages_in": 0, "bad_frames": 0, "ignored": 0, "messages_out": 0, "dropped": 0}
        self.rates_hz = dict(DEFAULT_RATES_HZ)
        self._outbox: list[tuple[float, object]] = []     # (due sim time, message) for latency
        self._latest: dict[str, object] = {}              # last message of each stream, for lockstep re-sends
        self._worker = Worker(self._run, "sitl", join_timeout_s=5.0)
        self._stop = self._worker.stop_event
        self.master = None

    def start(self) -> None:
        c = self.connection
        self.master = mavutil.mavlink_connection(c.url, baud=c.baud or 57600, source_system=1,
                                                 source_component=mav.MAV_COMP_ID_AUTOPILOT1)
        self.master.mav.robust_parsing = True
        self._worker.start()
        log.info("simulated %s quadrotor (%s) on %s, %s", self.autopilot, self.profile.name, c,
                 "lockstep" if self.lockstep else f"real time x{self.speed:g}")

    def stop(self) -> None:
        self._worker.stop()
        if self.master is not None:
            self.master.close()

    def alive(self) -> bool:
        return self._worker.alive()

    def cut_telemetry(self) -> None:
        """Simulates a lost downlink: nothing more is sent (commands are still received)."""
        self.downlink = False

    def restore_telemetry(self) -> None:
        self.downlink = True

    def _run(self) -> None:
        clock.run(self)

    def _step(self) -> None:
        super()._step()
        telemetry.stream(self)

    def _receive(self) -> bool:
        """Handles everything that has arrived; True if anything did."""
        got = False
        while not self._stop.is_set():
            try:
                msg = self.master.recv_msg()
            except Exception as exc:          # a corrupt frame or a socket error must never stop the vehicle
                self.counters["bad_frames"] += 1
                log.debug("receive: %s", exc)
                return got
            if msg is None:
                return got
            got = True
            with self._lock:
                try:
                    self._handle(msg)
                except Exception as exc:      # nor must a well-framed message with absurd fields
                    self.counters["ignored"] += 1
                    log.debug("ignored %s: %s", msg.get_type(), exc)
                if self.lockstep:
                    clock.tick(self, msg)
        return got

    # ------------------------------------------------------------------ messages in
    def _for_me(self, msg) -> bool:
        return getattr(msg, "target_system", 0) in (0, self.master.mav.srcSystem)

    def _handle(self, msg) -> None:
        kind = msg.get_type()
        if kind == "BAD_DATA":
            self.counters["bad_frames"] += 1
            return
        self.counters["messages_in"] += 1
        if not self._for_me(msg):
            return
        handler = getattr(self, "_on_" + kind.lower(), None)
        if handler is not None:
            handler(msg)

    def _ack(self, command: int, result: int) -> None:
        self.send(self.master.mav.command_ack_encode(command, result))

    def _on_command_long(self, msg) -> None:
        handlers = {mav.MAV_CMD_COMPONENT_ARM_DISARM: self._cmd_arm_disarm, mav.MAV_CMD_DO_SET_MODE: self._cmd_set_mode,
                    mav.MAV_CMD_SET_MESSAGE_INTERVAL: self._cmd_message_interval,
                    mav.MAV_CMD_REQUEST_MESSAGE: self._cmd_request_message,
                    mav.MAV_CMD_DO_MOTOR_TEST: self._cmd_motor_test}
        handler = handlers.get(msg.command)
        p = [msg.param1, msg.param2, msg.param3, msg.param4, msg.param5, msg.param6, msg.param7]
        if handler is None:
            result = mav.MAV_RESULT_UNSUPPORTED
        elif not all(math.isfinite(x) for x in p):
            result = mav.MAV_RESULT_DENIED
        else:
            result = handler(*p)
        self._ack(msg.command, result)

    def _cmd_arm_disarm(self, arm, force, *_) -> int:
        if arm == 1.0:
            ok = self.arm()
        elif arm == 0.0:
            ok = self.disarm(force=int(force) == FORCE_DISARM_MAGIC)
        else:
            ok = False
        return mav.MAV_RESULT_ACCEPTED if ok else mav.MAV_RESULT_DENIED

    def _cmd_set_mode(self, base_mode, main, sub, *_) -> int:
        if not int(base_mode) & mav.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED:
            return mav.MAV_RESULT_DENIED
        custom = (int(main) << 16 | int(sub) << 24) if self.autopilot == "px4" else int(main)
        return mav.MAV_RESULT_ACCEPTED if self._set_mode(custom) else mav.MAV_RESULT_DENIED

    def _cmd_message_interval(self, msg_id, interval_us, *_) -> int:
        name = self._message_name(msg_id)
        if name is None:
            return mav.MAV_RESULT_DENIED
        if interval_us == 0:
            self.rates_hz[name] = DEFAULT_RATES_HZ[name]
        elif interval_us < 0:
            self.rates_hz[name] = 0.0
        else:
            self.rates_hz[name] = 1e6 / interval_us
        return mav.MAV_RESULT_ACCEPTED

    def _cmd_request_message(self, msg_id, *_) -> int:
        name = self._message_name(msg_id)
        if name is None:
            return mav.MAV_RESULT_DENIED
        self.send(telemetry.build(self, name))
        return mav.MAV_RESULT_ACCEPTED

    @staticmethod
    def _message_name(msg_id) -> str | None:
        cls = mav.mavlink_map.get(int(msg_id)) if 0 <= msg_id < 1 << 24 else None
        return cls.msgname if cls is not None and cls.msgname in DEFAULT_RATES_HZ else None

    def _cmd_motor_test(self, instance, throttle_type, value, timeout_s, count, order, *_) -> int:
        """Spins one motor (1-based instance; order 2 = board order, else ArduPilot's clockwise
        sequence from the front right) at a percentage (type 0) or PWM (type 1), disarmed only."""
        if self.armed or not 1 <= instance <= 4 or not 0 < timeout_s <= 30:
            return mav.MAV_RESULT_DENIED
        if throttle_type == mav.MOTOR_TEST_THROTTLE_PERCENT:
            throttle = value / 100.0
        elif throttle_type == mav.MOTOR_TEST_THROTTLE_PWM:
            throttle = (value - 1000.0) / 1000.0
        else:
            return mav.MAV_RESULT_UNSUPPORTED
        k = int(instance) - 1
        motor = k if int(order) == mav.MOTOR_TEST_ORDER_BOARD else MOTOR_ORDERS["motor_test"].index(k)
        return mav.MAV_RESULT_ACCEPTED if self.motor_test(motor, throttle, timeout_s) else mav.MAV_RESULT_DENIED

    def _on_set_mode(self, msg) -> None:
        self._set_mode(int(msg.custom_mode))

    def _on_set_attitude_target(self, msg) -> None:
        self._note_stream()
        if self.mode not in OFFBOARD_MODES[self.autopilot]:
            return                            # like the real ones: ignored outside guided / offboard
        problem = self._attitude_target_problem(msg)
        if problem:
            self._setpoint = None
            self._fail(f"invalid SET_ATTITUDE_TARGET: {problem}", land=False, brake=True)
            return
        m = msg.type_mask
        rates = None if m & 0b111 == 0b111 else frames.frd_to_flu([msg.body_roll_rate, msg.body_pitch_rate,
                                                                   msg.body_yaw_rate])
        climb = self.autopilot == "ardupilot" and not int(self.params["GUID_OPTIONS"]) & 8
        thrust = float(np.clip(msg.thrust, 0.0, 1.0))
        if climb:                             # ArduPilot's climb-rate reading of the thrust field
            speed = self.params["WPNAV_SPEED_UP" if msg.thrust >= 0.5 else "WPNAV_SPEED_DN"] / 100.0
            thrust = (float(np.clip(msg.thrust, 0.0, 1.0)) - 0.5) * 2.0 * speed
        if m & mav.ATTITUDE_TARGET_TYPEMASK_ATTITUDE_IGNORE:
            sp = Setpoint(self.sim_time_s, "rates", thrust, rates_flu=rates, climb=climb)
        else:
            q = np.asarray(msg.q, float)
            sp = Setpoint(self.sim_time_s, "attitude", thrust, rates_flu=rates, climb=climb,
                          q_enu_flu=frames.quat_ned_frd_to_enu_flu(q / np.linalg.norm(q)))
        self._accept(sp)

    @staticmethod
    def _attitude_target_problem(msg) -> str | None:
        m = msg.type_mask
        if m & mav.ATTITUDE_TARGET_TYPEMASK_THROTTLE_IGNORE:
            return "thrust ignored (type_mask bit 6)"
        if not math.isfinite(msg.thrust):
            return "thrust is not a number"
        if not m & mav.ATTITUDE_TARGET_TYPEMASK_ATTITUDE_IGNORE:
            q = np.asarray(msg.q, float)
            if not np.all(np.isfinite(q)) or abs(float(np.linalg.norm(q)) - 1.0) > 1e-3:
                return f"attitude quaternion {np.round(q, 4).tolist()} is not of unit length"
        if 0 < m & 0b111 < 0b111:
            return "only some body rates ignored (type_mask bits 0..2)"
        if m & 0b111 == 0 and not all(math.isfinite(r) for r in (msg.body_roll_rate, msg.body_pitch_rate,
                                                                  msg.body_yaw_rate)):
            return "body rates are not numbers"
        return None

    def _on_set_actuator_control_target(self, msg) -> None:
        self._note_stream()
        if msg.group_mlx != 0 or self.mode not in OFFBOARD_MODES[self.autopilot]:
            return
        u = np.asarray(msg.controls[:4], float)
        if not (np.all(np.isfinite(u)) and np.all((u >= 0.0) & (u <= 1.0))):
            self._setpoint = None
            self._fail(f"invalid motor setpoint {np.round(u, 3).tolist()}", land=False, brake=True)
            return
        self._accept(Setpoint(self.sim_time_s, "motor", motors=u))

    def _param_value(self, name: str):
        index = list(self.params).index(name)
        return self.master.mav.param_value_encode(name.encode(), float(self.params[name]),
                                                  mav.MAV_PARAM_TYPE_REAL32, len(self.params), index)

    @staticmethod
    def _param_name(raw) -> str:
        return (raw if isinstance(raw, str) else raw.decode(errors="replace")).rstrip("\x00")

    def _on_param_request_read(self, msg) -> None:
        name = self._param_name(msg.param_id)
        if name not in self.params and 0 <= msg.param_index < len(self.params):
            name = list(self.params)[msg.param_index]
        if name in self.params:
            self.send(self._param_value(name))

    def _on_param_request_list(self, msg) -> None:
        for name in list(self.params):
            self.send(self._param_value(name))

    def _on_param_set(self, msg) -> None:
        """Sets a known parameter within its range (PARAM_RANGES); the reply is always the value in
        force, so a refused set reads back unchanged (with a STATUSTEXT saying why)."""
        name = self._param_name(msg.param_id)
        if name not in self.params:
            return
        problem = param_problem(name, float(msg.param_value))
        if problem is None:
            self.params[name] = float(msg.param_value)
            log.info("param %s = %g", name, self.params[name])
        else:
            log.warning("PARAM_SET refused: %s", problem)
            self._text(mav.MAV_SEVERITY_WARNING, f"PARAM_SET refused: {problem}")
        self.send(self._param_value(name))

    def _on_timesync(self, msg) -> None:
        if msg.tc1 == 0:
            now_ns = max(1, int(self.sim_time_s * 1e9))   # tc1 != 0 marks a reply
            self.send(self.master.mav.timesync_encode(now_ns, msg.ts1))

    # ------------------------------------------------------------------ messages out
    def send(self, msg) -> None:
        """Packs and writes one message now (numbering it in sequence)."""
        if not self.downlink or msg is None:
            return
        m = self.master.mav
        try:
            buf = msg.pack(m)
            self.master.write(buf)
            self.counters["messages_out"] += 1
        except OSError:
            pass                              # nobody listening yet (udpout), or the peer went away
        m.seq = (m.seq + 1) % 256

    def _text(self, severity: int, text: str) -> None:
        self.send(self.master.mav.statustext_encode(severity, text[:50].encode()))
