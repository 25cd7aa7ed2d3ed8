"""What the simulated vehicle sends: its streams (paced by sim time, through latency and loss),
built from the sensed state (the truth plus the realism noise, NED / FRD)."""
from __future__ import annotations

import math

import numpy as np

from flight.sitl.mavlink_dialect import mav
from flight.sitl.vehicle import BATTERY_CRITICAL_FRAC, SPIN_ARM, SitlError
from sim.core import GRAVITY_M_S2, omega_to_throttle
from skyloop import frames
from skyloop.autopilot import OFFBOARD_MODES

DEFAULT_RATES_HZ = {"HEARTBEAT": 1.0, "ATTITUDE": 50.0, "ATTITUDE_QUATERNION": 50.0, "LOCAL_POSITION_NED": 50.0,
                    "ODOMETRY": 0.0, "HIGHRES_IMU": 50.0, "SYS_STATUS": 5.0, "BATTERY_STATUS": 5.0,
                    "ESC_TELEMETRY_1_TO_4": 10.0, "SERVO_OUTPUT_RAW": 10.0}


def stream(v, force: bool = False) -> None:
    """After a step: the streams that fall due (on average at the requested rate, at most one per
    step), through latency and loss."""
    r = v.realism
    for name, hz in v.rates_hz.items():
        if hz <= 0:
            continue
        per_step = min(1.0, hz * v.dt_s)             # due when the count of sends ticks over
        if not force and math.floor(v.steps * per_step + 1e-9) == math.floor((v.steps - 1) * per_step + 1e-9):
            continue
        msg = build(v, name)
        v._latest[name] = msg
        if name != "HEARTBEAT" and r.drop > 0 and v._noise_rng.random() < r.drop:
            v.counters["dropped"] += 1
            v.master.mav.seq = (v.master.mav.seq + 1) % 256    # lost on the way: a gap in sequence
            continue
        v._outbox.append((v.sim_time_s + (r.latency_s if name != "HEARTBEAT" else 0.0), msg))
    due = [m for t, m in v._outbox if t <= v.sim_time_s + 1e-9]
    v._outbox = [(t, m) for t, m in v._outbox if t > v.sim_time_s + 1e-9]
    for msg in due:
        v.send(msg)


def resend_latest(v) -> None:
    """Lockstep and idle: the newest message of each stream again, and a fresh heartbeat."""
    v._latest["HEARTBEAT"] = build(v, "HEARTBEAT")
    for name, msg in v._latest.items():
        if v.rates_hz.get(name, 0) > 0 or name == "HEARTBEAT":
            v.send(msg)


def sensed(v) -> dict:
    """What the estimator reports: the true state plus the realism noise, NED / FRD, the position
    relative to the vehicle's origin (v.origin_enu_m)."""
    r, rng = v.realism, v._noise_rng
    s = v.env.state(0)
    q = np.asarray(s["quat_wxyz"], float)
    if r.att_noise_rad > 0:
        q = frames.quat_multiply(q, frames.quat_from_axis_angle(rng.normal(size=3), r.att_noise_rad *
                                                                abs(rng.normal())))
    gyro_flu = np.asarray(s["omega_flu_rad_s"], float) + frames.frd_to_flu(v._gyro_bias)
    if r.gyro_noise_rad_s > 0:
        gyro_flu = gyro_flu + rng.normal(size=3) * r.gyro_noise_rad_s
    pos = np.asarray(s["pos_enu_m"], float) - v.origin_enu_m
    pos = pos + (rng.normal(size=3) * r.pos_noise_m if r.pos_noise_m > 0 else 0)
    vel = np.asarray(s["vel_enu_m_s"], float) + (rng.normal(size=3) * r.vel_noise_m_s if r.vel_noise_m_s > 0 else 0)
    return {"pos_ned": frames.enu_to_ned(pos), "vel_ned": frames.enu_to_ned(vel),
            "q_ned_frd": frames.quat_enu_flu_to_ned_frd(q), "gyro_frd": frames.flu_to_frd(gyro_flu),
            "q_enu_flu": q, "rotor_rad_s": np.asarray(s["rotor_rad_s"], float)}


def throttle(v, rotor_rad_s) -> np.ndarray:
    """Motor throttle 0..1 that gives these rotor speeds on the nominal throttle curve."""
    w = np.asarray(rotor_rad_s, float) / max(v._kv[v.action_mode], 1e-9)
    return omega_to_throttle(v.env.core.drone["nom_curve"][:, 0], w)


def build(v, name: str):
    m = v.master.mav
    t_ms = int(round(v.sim_time_s * 1000)) & 0xFFFFFFFF
    t_us = int(round(v.sim_time_s * 1e6))
    if name == "HEARTBEAT":
        base = mav.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED | mav.MAV_MODE_FLAG_STABILIZE_ENABLED
        base |= mav.MAV_MODE_FLAG_SAFETY_ARMED if v.armed else 0
        base |= mav.MAV_MODE_FLAG_GUIDED_ENABLED if v.mode in OFFBOARD_MODES[v.autopilot] else 0
        ap = mav.MAV_AUTOPILOT_PX4 if v.autopilot == "px4" else mav.MAV_AUTOPILOT_ARDUPILOTMEGA
        status = (mav.MAV_STATE_CRITICAL if v.armed and v.failsafe and v._failsafe_active()
                  else mav.MAV_STATE_ACTIVE if v.armed else mav.MAV_STATE_STANDBY)
        return m.heartbeat_encode(mav.MAV_TYPE_QUADROTOR, ap, base, v.custom_mode, status)
    volts, amps = v.battery.voltage_v, v.battery.load_a
    remaining = int(round(100 * v.battery.soc))
    if name == "SYS_STATUS":
        sensors = (mav.MAV_SYS_STATUS_SENSOR_3D_GYRO | mav.MAV_SYS_STATUS_SENSOR_3D_ACCEL |
                   mav.MAV_SYS_STATUS_SENSOR_ABSOLUTE_PRESSURE | mav.MAV_SYS_STATUS_SENSOR_MOTOR_OUTPUTS |
                   mav.MAV_SYS_STATUS_SENSOR_BATTERY)
        return m.sys_status_encode(sensors, sensors, sensors, 100, int(volts * 1000), int(amps * 100), remaining,
                                   int(10000 * v.realism.drop), 0, 0, 0, 0, 0)
    if name == "BATTERY_STATUS":
        cells = [int(volts / v.cells * 1000)] * v.cells + [65535] * (10 - v.cells)
        state = (mav.MAV_BATTERY_CHARGE_STATE_CRITICAL if v.battery.soc <= BATTERY_CRITICAL_FRAC
                 else mav.MAV_BATTERY_CHARGE_STATE_OK)
        return m.battery_status_encode(0, mav.MAV_BATTERY_FUNCTION_ALL, mav.MAV_BATTERY_TYPE_LIPO, 32767, cells,
                                       int(amps * 100), int(v.battery.consumed_mah), -1, remaining,
                                       charge_state=state)
    s = sensed(v)
    if name == "LOCAL_POSITION_NED":
        return m.local_position_ned_encode(t_ms, *s["pos_ned"], *s["vel_ned"])
    if name == "ATTITUDE_QUATERNION":
        return m.attitude_quaternion_encode(t_ms, *s["q_ned_frd"], *s["gyro_frd"])
    if name == "ATTITUDE":
        return m.attitude_encode(t_ms, *frames.quat_to_euler_rpy(s["q_ned_frd"]), *s["gyro_frd"])
    if name == "ODOMETRY":
        vel_frd = frames.rotate_inverse(s["q_ned_frd"], s["vel_ned"])
        unknown = [math.nan] + [0.0] * 20
        return m.odometry_encode(t_us, mav.MAV_FRAME_LOCAL_NED, mav.MAV_FRAME_BODY_FRD, *s["pos_ned"],
                                 s["q_ned_frd"], *vel_frd, *s["gyro_frd"], unknown, unknown, 0,
                                 mav.MAV_ESTIMATOR_TYPE_NAIVE, 100)
    if name == "HIGHRES_IMU":
        specific_flu = frames.rotate_inverse(s["q_enu_flu"], v._accel_enu + [0.0, 0.0, GRAVITY_M_S2])
        if v.realism.accel_noise_m_s2 > 0:
            specific_flu = specific_flu + v._noise_rng.normal(size=3) * v.realism.accel_noise_m_s2
        alt_m = -s["pos_ned"][2]
        pressure_hpa = 1013.25 * (1.0 - 2.25577e-5 * alt_m) ** 5.25588
        return m.highres_imu_encode(t_us, *frames.flu_to_frd(specific_flu), *s["gyro_frd"], 0.0, 0.0, 0.0,
                                    pressure_hpa, 0.0, alt_m, 20.0, 0x1E3F)
    if name == "ESC_TELEMETRY_1_TO_4":
        # the sim's rotors idle at the throttle curve's lowest speed; a disarmed vehicle reports
        # the motors it does not spin as stopped, as a real one would
        spinning = [v.armed or (v._motor_test is not None and v._motor_test[0] == k) for k in range(4)]
        rpm = [int(min(65535, abs(w) * 60.0 / (2 * math.pi))) if on else 0
               for w, on in zip(s["rotor_rad_s"], spinning)]
        amps_each = int(amps * 25)
        return m.esc_telemetry_1_to_4_encode([25] * 4, [int(volts * 100)] * 4, [amps_each] * 4,
                                             [int(v.battery.consumed_mah / 4)] * 4, rpm, [0] * 4)
    if name == "SERVO_OUTPUT_RAW":
        spinning = [v.motors_live or (v._motor_test is not None and v._motor_test[0] == k) for k in range(4)]
        idle = SPIN_ARM if v.motors_live else 0.0      # armed and live: at least ground idle, as ArduPilot reports
        pwm = [int(1000 + 1000 * max(u, idle)) if on else 1000 for u, on in zip(throttle(v, s["rotor_rad_s"]), spinning)]
        return m.servo_output_raw_encode(t_us & 0xFFFFFFFF, 0, *pwm, 0, 0, 0, 0)
    raise SitlError(f"no stream named {name}")
