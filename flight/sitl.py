"""A simulated MAVLink quadrotor on our own sim: `skyloop sitl`, and what `fly` flies by default.

    skyloop sitl --profile fpv5 --listen udpin:127.0.0.1:14550 --autopilot px4

It behaves like the flight controllers users own, as far as the flight runner sees them:
- HEARTBEAT (quadrotor, armed bit, custom modes named like ArduPilot's STABILIZE / GUIDED_NOGPS /
  LAND or PX4's OFFBOARD / AUTO.LAND); COMMAND_LONG with COMMAND_ACK (arm / disarm, DO_SET_MODE,
  SET_MESSAGE_INTERVAL, REQUEST_MESSAGE); SET_MODE; PARAM_REQUEST_READ -> PARAM_VALUE (GUID_OPTIONS,
  MOT_THST_HOVER); TIMESYNC.
- SET_ATTITUDE_TARGET in GUIDED_NOGPS / OFFBOARD: body rates + thrust (type_mask 128-style: the
  attitude ignored) or attitude + thrust (the rates ignored, tracked by an attitude P loop); the
  thrust is the fraction of the maximum thrust (MOT_THST_HOVER reports the hover fraction, with
  GUID_OPTIONS bit 3 set: "thrust means thrust"). A setpoint that breaks the rules (not a unit
  quaternion, no thrust, a NaN) is not flown: the vehicle stops and lands, as on a missing stream.
- SET_ACTUATOR_CONTROL_TARGET group 0 (per-motor commands 0..1, PX4/ArduPilot motor order) for the
  `motor` action mode. Note: current PX4 and ArduPilot do not accept per-motor commands in flight;
  this path exists for the sim and for custom firmware.
- Streams (default 50 Hz state, 5 Hz battery; SET_MESSAGE_INTERVAL changes them): ATTITUDE,
  ATTITUDE_QUATERNION, LOCAL_POSITION_NED, HIGHRES_IMU, SYS_STATUS, BATTERY_STATUS, ESC_TELEMETRY_1_TO_4,
  SERVO_OUTPUT_RAW; NED / FRD through flight/frames.py.
- Failsafes: setpoint stream lost for more than `setpoint_timeout_s` (0.5 s, like PX4's
  COM_OF_LOSS_T / ArduPilot's GUID_TIMEOUT) or an invalid setpoint -> level and descend (LAND);
  disarm after standing on the ground for 1 s while landing.

The vehicle runs in real time (`speed` scales it) in a thread; `SitlVehicle` is a context manager.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time

import numpy as np

from flight import frames
from flight.connection import parse_connection

os.environ.setdefault("MAVLINK20", "1")
from pymavlink import mavutil  # noqa: E402

from sim.env import DroneEnv  # noqa: E402
from sim.profiles import Profile, load_profile  # noqa: E402

log = logging.getLogger(__name__)
mav = mavutil.mavlink
MODES = {"ardupilot": {"STABILIZE": 0, "GUIDED_NOGPS": 20, "LAND": 9},
         "px4": {"STABILIZE": 7 << 16, "OFFBOARD": 6 << 16, "AUTO.LAND": (4 << 16) | (6 << 24)}}
OFFBOARD = {"ardupilot": "GUIDED_NOGPS", "px4": "OFFBOARD"}
LANDING = {"ardupilot": "LAND", "px4": "AUTO.LAND"}
DEFAULT_RATES_HZ = {"HEARTBEAT": 1.0, "ATTITUDE": 50.0, "ATTITUDE_QUATERNION": 50.0, "LOCAL_POSITION_NED": 50.0,
                    "HIGHRES_IMU": 50.0, "SYS_STATUS": 5.0, "BATTERY_STATUS": 5.0, "ESC_TELEMETRY_1_TO_4": 10.0,
                    "SERVO_OUTPUT_RAW": 10.0}
ATTITUDE_KP_PER_S = 6.0        # attitude error -> body rate command
LAND_SPEED_M_S = 0.5


class SitlVehicle:
    def __init__(self, profile: str | Profile = "crazyflie21", listen: str = "udpin:127.0.0.1:14550",
                 autopilot: str = "ardupilot", start_pos_enu_m=(0.0, 0.0, 0.0), start_yaw_rad: float = 0.0,
                 speed: float = 1.0, setpoint_timeout_s: float = 0.5, seed: int = 0):
        if autopilot not in MODES:
            raise ValueError(f"autopilot must be ardupilot or px4, got {autopilot!r}")
        self.profile = profile if isinstance(profile, Profile) else load_profile(profile)
        self.connection = parse_connection(listen)
        self.autopilot, self.speed, self.setpoint_timeout_s = autopilot, speed, setpoint_timeout_s
        self.cells = max(1, round(self.profile.params["battery_v_nominal"] / 3.8))   # LiPo cells in series
        task = {"bounds_m": [1e4, 1e4, 1e4], "episode_s": 1e5}
        self.envs = {m: DroneEnv(1, self.profile.nominal(), action_mode=m, randomize=False, task=task, seed=seed)
                     for m in ("ctbr", "motor")}
        for env in self.envs.values():
            env.reset(seed=seed)
        self.mode_now = "ctbr"
        d = self.env.core.drone
        self.hover_frac = (float(d["hover_action"][0, 0]) + 1.0) / 2.0
        self.rate_max_rad_s = np.asarray(self.profile.params["rate_max_rad_s"], float)
        q = [math.cos(start_yaw_rad / 2), 0.0, 0.0, math.sin(start_yaw_rad / 2)]
        self.env.set_state(0, pos_enu_m=start_pos_enu_m, vel_enu_m_s=[0, 0, 0], quat_wxyz=q,
                           omega_flu_rad_s=[0, 0, 0], rotor_rad_s=[0, 0, 0, 0])
        self.ground_z_m = float(start_pos_enu_m[2])
        self.armed = False
        self.custom_mode = MODES[autopilot]["STABILIZE"]
        self.setpoint = None              # (t_s, "ctbr"|"motor", action)
        self.failsafe: str | None = None
        self.failsafe_t_s: float | None = None
        self.rates_hz = dict(DEFAULT_RATES_HZ)
        self.params = {"GUID_OPTIONS": 8.0, "GUID_TIMEOUT": setpoint_timeout_s, "MOT_THST_HOVER": self.hover_frac,
                       "COM_OF_LOSS_T": setpoint_timeout_s}
        self.sim_time_s = 0.0
        self.downlink = True              # False: the radio stops carrying telemetry (commands still arrive)
        self.frames_bad = 0
        self._next_send = {}
        self._stop = threading.Event()
        self._thread = None
        self._lock = threading.Lock()
        self._ground_since = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def env(self) -> DroneEnv:
        return self.envs[self.mode_now]

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def start(self) -> None:
        c = self.connection
        self.master = mavutil.mavlink_connection(c.url, baud=c.baud or 57600, source_system=1, source_component=1)
        self._thread = threading.Thread(target=self._loop, daemon=True, name="sitl")
        self._thread.start()
        log.info("simulated %s quadrotor (%s) on %s", self.autopilot, self.profile.name, c)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self.master.close()

    def cut_telemetry(self) -> None:
        """Simulates a lost downlink: nothing more is sent to the ground (commands are still received)."""
        self.downlink = False

    def set_wind(self, force_enu_n) -> None:
        """A constant wind force on the drone, world frame ENU [N]."""
        with self._lock:
            for env in self.envs.values():
                env.core.drone["force_n"][:, 0] = np.asarray(force_enu_n, np.float32)

    def state(self) -> dict:
        with self._lock:
            return self.env.state(0)

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        dt = self.env.core.control_dt_s
        next_t = time.monotonic()
        while not self._stop.is_set():
            self._receive()
            with self._lock:
                self._step(dt)
            self._stream()
            next_t += dt / self.speed
            pause = next_t - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            else:
                next_t = time.monotonic()

    def _receive(self) -> None:
        while True:
            try:
                msg = self.master.recv_msg()
            except Exception:          # a corrupt frame must never stop the vehicle
                self.frames_bad += 1
                continue
            if msg is None:
                return
            try:
                self._handle(msg)
            except Exception as exc:   # nor must a well-framed message with absurd fields
                self.frames_bad += 1
                log.debug("ignored %s: %s", msg.get_type(), exc)

    def _mode_name(self) -> str:
        return {v: k for k, v in MODES[self.autopilot].items()}.get(self.custom_mode, "?")

    def _offboard(self) -> bool:
        return self._mode_name() == OFFBOARD[self.autopilot]

    def _step(self, dt: float) -> None:
        now = self.sim_time_s
        action, mode = self._command(now)
        if mode != self.mode_now:
            s = self.env.state(0)
            self.mode_now = mode
            self.env.set_state(0, **s)
        self.env.step_physics(action.reshape(1, 4))
        self.sim_time_s += dt
        s = self.env.state(0)
        on_ground = s["pos_enu_m"][2] < self.ground_z_m + 0.05 and abs(s["vel_enu_m_s"][2]) < 0.1
        landing = self._mode_name() == LANDING[self.autopilot]
        if self.armed and landing and on_ground:
            self._ground_since = self._ground_since if self._ground_since is not None else now
            if now - self._ground_since > 1.0:
                self.armed = False
                log.info("landed: disarmed")
        else:
            self._ground_since = None

    def _command(self, now: float) -> tuple[np.ndarray, str]:
        """The action flown this step: the setpoint, a landing, or motors off."""
        off = np.array([-1.0, 0, 0, 0], np.float32)
        if not self.armed:
            return off, "ctbr"
        fresh = self.setpoint is not None and now - self.setpoint[0] <= self.setpoint_timeout_s
        if self._offboard() and not fresh and self.setpoint is not None:
            self._fail("setpoint stream lost for more than %.2f s" % self.setpoint_timeout_s)
        if self._offboard() and fresh:
            return self.setpoint[2], self.setpoint[1]
        if self._mode_name() == LANDING[self.autopilot]:
            return self._land_action(), "ctbr"
        return off, "ctbr"                          # armed, but no setpoint yet: idle

    def _land_action(self) -> np.ndarray:
        """Level and descend at LAND_SPEED_M_S: a small P controller in ctbr."""
        s = self.env.state(0)
        q = s["quat_wxyz"]
        up_body = frames.rotate(q * [1, -1, -1, -1], [0, 0, 1])        # world up in body axes
        rates = np.clip(ATTITUDE_KP_PER_S * np.array([up_body[1], -up_body[0], 0.0]), -3, 3)
        vz_err = -LAND_SPEED_M_S - s["vel_enu_m_s"][2]
        thrust = self.hover_frac * (1.0 + 0.5 * vz_err)
        a = np.zeros(4, np.float32)
        a[0] = np.clip(2 * thrust - 1, -1, 1)
        a[1:] = np.clip(rates / self.rate_max_rad_s, -1, 1)
        return a

    def _fail(self, reason: str) -> None:
        if self.failsafe is None or self._offboard():
            log.warning("failsafe: %s -> %s", reason, LANDING[self.autopilot])
            self.failsafe, self.failsafe_t_s = reason, self.sim_time_s
        self.custom_mode = MODES[self.autopilot][LANDING[self.autopilot]]
        self.setpoint = None

    # ------------------------------------------------------------------ messages in
    def _ack(self, command: int, result: int) -> None:
        self.master.mav.command_ack_send(command, result)

    def _set_mode(self, custom_mode: int) -> bool:
        if custom_mode not in MODES[self.autopilot].values():
            return False
        self.custom_mode = custom_mode
        if self._offboard():
            self.failsafe = None
        return True

    def _handle(self, msg) -> None:
        kind = msg.get_type()
        if kind == "BAD_DATA":
            self.frames_bad += 1
        elif kind == "COMMAND_LONG":
            self._handle_command(msg)
        elif kind == "SET_MODE":
            self._set_mode(int(msg.custom_mode))
        elif kind == "SET_ATTITUDE_TARGET":
            self._handle_attitude_target(msg)
        elif kind == "SET_ACTUATOR_CONTROL_TARGET":
            if msg.group_mlx == 0 and self._offboard():
                u = np.asarray(msg.controls[:4], float)
                if np.all(np.isfinite(u)) and np.all((u >= 0) & (u <= 1)):
                    self.setpoint = (self.sim_time_s, "motor", (2 * u - 1).astype(np.float32))
                else:
                    self._fail(f"invalid motor setpoint {u.tolist()}")
        elif kind == "PARAM_REQUEST_READ":
            name = msg.param_id if isinstance(msg.param_id, str) else msg.param_id.decode(errors="replace")
            name = name.rstrip("\x00")
            if name in self.params:
                index = list(self.params).index(name)
                self.master.mav.param_value_send(name.encode(), self.params[name], mav.MAV_PARAM_TYPE_REAL32,
                                                 len(self.params), index)
        elif kind == "TIMESYNC" and msg.tc1 == 0:
            self.master.mav.timesync_send(time.monotonic_ns(), msg.ts1)

    def _handle_command(self, msg) -> None:
        cmd = msg.command
        ok, refused = mav.MAV_RESULT_ACCEPTED, mav.MAV_RESULT_DENIED
        if cmd == mav.MAV_CMD_COMPONENT_ARM_DISARM:
            if msg.param1 >= 0.5:
                allowed = self._offboard() or self._mode_name() == "STABILIZE"
                self.armed = self.armed or allowed
                self._ack(cmd, ok if allowed else refused)
            else:
                s = self.env.state(0)
                grounded = s["pos_enu_m"][2] < self.ground_z_m + 0.1
                forced = int(round(msg.param2)) == 21196
                if grounded or forced:
                    self.armed = False
                self._ack(cmd, ok if grounded or forced else refused)
        elif cmd == mav.MAV_CMD_DO_SET_MODE:
            custom = int(msg.param2) << 16 | int(msg.param3) << 24 if self.autopilot == "px4" else int(msg.param2)
            self._ack(cmd, ok if self._set_mode(custom) else refused)
        elif cmd == mav.MAV_CMD_SET_MESSAGE_INTERVAL:
            name = mav.mavlink_map.get(int(msg.param1))
            name = name.msgname if name is not None else None
            if name in DEFAULT_RATES_HZ and msg.param2 != 0:
                self.rates_hz[name] = 0.0 if msg.param2 < 0 else min(1e6 / msg.param2, 200.0)
                self._ack(cmd, ok)
            else:
                self._ack(cmd, refused)
        elif cmd == mav.MAV_CMD_REQUEST_MESSAGE:
            name = mav.mavlink_map.get(int(msg.param1))
            if name is not None and name.msgname in DEFAULT_RATES_HZ:
                self._next_send[name.msgname] = 0.0
                self._ack(cmd, ok)
            else:
                self._ack(cmd, refused)
        else:
            self._ack(cmd, mav.MAV_RESULT_UNSUPPORTED)

    def _handle_attitude_target(self, msg) -> None:
        if not self._offboard():
            return                                  # like the real ones: ignored outside guided/offboard
        ignore_rates = msg.type_mask & 0b111 == 0b111
        ignore_attitude = bool(msg.type_mask & 128)
        thrust = float(msg.thrust)
        q = np.asarray(msg.q, float)
        rates_frd = np.array([msg.body_roll_rate, msg.body_pitch_rate, msg.body_yaw_rate], float)
        problem = None
        if msg.type_mask & 64 or not math.isfinite(thrust) or not 0.0 <= thrust <= 1.0:
            problem = f"thrust missing or outside 0..1 ({thrust})"
        elif not ignore_attitude and (not np.all(np.isfinite(q)) or abs(np.linalg.norm(q) - 1.0) > 1e-3):
            problem = f"attitude quaternion is not a unit quaternion ({q.tolist()})"
        elif not ignore_rates and not np.all(np.isfinite(rates_frd)):
            problem = "body rates are not finite"
        elif ignore_rates == ignore_attitude:
            problem = f"type_mask {msg.type_mask}: give either the attitude or the body rates"
        if problem:
            self._fail(f"invalid SET_ATTITUDE_TARGET: {problem}")
            return
        if ignore_attitude:
            rates_flu = frames.frd_to_flu(rates_frd)
        else:                                      # attitude target -> body rates through a P loop
            q_target = frames.quat_ned_frd_to_enu_flu(q)
            q_now = self.env.state(0)["quat_wxyz"]
            err = frames.quat_multiply(q_now * [1, -1, -1, -1], q_target)
            err = err if err[0] >= 0 else -err
            rates_flu = ATTITUDE_KP_PER_S * 2.0 * err[1:]
        a = np.empty(4, np.float32)
        a[0] = 2.0 * thrust - 1.0
        a[1:] = np.clip(rates_flu / self.rate_max_rad_s, -1.0, 1.0)
        self.setpoint = (self.sim_time_s, "ctbr", a)

    # ------------------------------------------------------------------ messages out
    def _stream(self) -> None:
        now = self.sim_time_s
        if not self.downlink:
            return
        for name, hz in self.rates_hz.items():
            if hz <= 0 or now < self._next_send.get(name, 0.0):
                continue
            self._next_send[name] = now + 1.0 / hz
            try:
                self._send(name)
            except OSError:
                pass                               # nobody listening yet (udpout) or the peer went away

    def _send(self, name: str) -> None:
        m = self.master.mav
        with self._lock:
            s = self.env.state(0)
            d = self.env.core.drone
            battery_v = float(d["battery_v"][0, 0])
        t_ms = int(self.sim_time_s * 1000)
        pos, vel = frames.enu_to_ned(s["pos_enu_m"]), frames.enu_to_ned(s["vel_enu_m_s"])
        q = frames.quat_enu_flu_to_ned_frd(s["quat_wxyz"])
        w = frames.flu_to_frd(s["omega_flu_rad_s"])
        rpm = s["rotor_rad_s"] * 60.0 / (2 * math.pi)
        load = float(np.clip(np.mean(s["rotor_rad_s"]) / float(d["omega_max_rad_s"][0, 0]), 0, 1))
        volts = battery_v * (1.0 - 0.06 * load * load)            # sag under load
        if name == "HEARTBEAT":
            base = mav.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED | (mav.MAV_MODE_FLAG_SAFETY_ARMED if self.armed else 0)
            ap = mav.MAV_AUTOPILOT_PX4 if self.autopilot == "px4" else mav.MAV_AUTOPILOT_ARDUPILOTMEGA
            m.heartbeat_send(mav.MAV_TYPE_QUADROTOR, ap, base, self.custom_mode,
                             mav.MAV_STATE_ACTIVE if self.armed else mav.MAV_STATE_STANDBY)
        elif name == "LOCAL_POSITION_NED":
            m.local_position_ned_send(t_ms, *pos, *vel)
        elif name == "ATTITUDE_QUATERNION":
            m.attitude_quaternion_send(t_ms, *q, *w)
        elif name == "ATTITUDE":
            m.attitude_send(t_ms, *frames.quat_to_euler_rpy(q), *w)
        elif name == "HIGHRES_IMU":
            m.highres_imu_send(int(self.sim_time_s * 1e6), 0, 0, -9.81, *w, 0, 0, 0, 1013.0, 0, -pos[2], 20.0, 0x1FFF)
        elif name == "SYS_STATUS":
            m.sys_status_send(0, 0, 0, 500, int(volts * 1000), -1, -1, 0, 0, 0, 0, 0, 0)
        elif name == "BATTERY_STATUS":
            cells = [int(volts / self.cells * 1000)] * self.cells + [65535] * (10 - self.cells)
            m.battery_status_send(0, 0, 0, 2500, cells, -1, -1, -1, -1)
        elif name == "ESC_TELEMETRY_1_TO_4":
            m.esc_telemetry_1_to_4_send([25] * 4, [int(volts * 100)] * 4, [0] * 4, [0] * 4, [int(r) for r in rpm],
                                        [0] * 4)
        elif name == "SERVO_OUTPUT_RAW":
            pwm = [int(1000 + 1000 * r / float(d["omega_max_rad_s"][0, 0])) if self.armed else 1000
                   for r in s["rotor_rad_s"]]
            m.servo_output_raw_send(int(self.sim_time_s * 1e6), 0, *pwm, 0, 0, 0, 0)


def add_arguments(parser) -> None:
    parser.add_argument("--profile", default="crazyflie21", help="the simulated drone (profile name or JSON)")
    parser.add_argument("--listen", default="udpin:127.0.0.1:14550",
                        help="where to talk MAVLink: udpin:HOST:PORT (wait for a client), udpout:HOST:PORT, tcpin:...")
    parser.add_argument("--autopilot", default="ardupilot", choices=["ardupilot", "px4"], help="which one to imitate")
    parser.add_argument("--speed", type=float, default=1.0, help="simulated seconds per real second")
    parser.add_argument("--setpoint-timeout", type=float, default=0.5, help="setpoint loss failsafe [s]")
    parser.add_argument("--wind", type=float, nargs=3, default=[0, 0, 0], metavar=("E", "N", "U"),
                        help="constant wind force on the drone, ENU [N]")
    parser.add_argument("--start", type=float, nargs=4, default=[0, 0, 0, 0], metavar=("E", "N", "U", "YAW_DEG"),
                        help="start position ENU [m] and yaw [deg]")


def run(args) -> int:
    vehicle = SitlVehicle(args.profile, args.listen, args.autopilot, args.start[:3], math.radians(args.start[3]),
                          args.speed, args.setpoint_timeout)
    vehicle.set_wind(args.wind)
    with vehicle:
        print(f"skyloop sitl: simulated {args.autopilot} quadrotor ({vehicle.profile.name}) on {args.listen}; "
              "Ctrl-C to stop", file=sys.stderr)
        try:
            while True:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return 0
