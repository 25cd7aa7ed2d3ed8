"""The one place frames are converted. The sim: world ENU (x east, y north, z up), body FLU
(x forward, y left, z up). MAVLink: world NED (x north, y east, z down), body FRD. Quaternions
are `w, x, y, z` and rotate body vectors into the world frame (body -> world).

Both changes of axes are proper rotations by 180 degrees, each its own inverse:
    ENU <-> NED: swap x and y, negate z  (about the axis (1, 1, 0) / sqrt 2)
    FLU <-> FRD: negate y and z          (about the x axis)
so an attitude converts as q_ned_frd = Q_NED_ENU * q_enu_flu * Q_FLU_FRD, and the same formula
goes back. Yaw: ENU yaw is measured from east towards north, NED yaw from north towards east,
so yaw_ned = pi/2 - yaw_enu.

Everything else in the project calls these functions; nothing else flips a sign.
"""
from __future__ import annotations

import math

import numpy as np

_S = math.sqrt(0.5)
_Q_ENU_NED = np.array([0.0, _S, _S, 0.0])      # rotates NED axes onto ENU axes (and back)
_Q_FLU_FRD = np.array([0.0, 1.0, 0.0, 0.0])    # rotates FRD axes onto FLU axes (and back)


# ---------------------------------------------------------------- vectors
def ned_to_enu(v) -> np.ndarray:
    """A world vector (position, velocity, acceleration, force) from NED to ENU; the same function goes back."""
    x, y, z = (float(a) for a in v)
    return np.array([y, x, -z])


enu_to_ned = ned_to_enu


def frd_to_flu(v) -> np.ndarray:
    """A body vector (body rates, specific force, torque) from FRD to FLU; the same function goes back."""
    x, y, z = (float(a) for a in v)
    return np.array([x, -y, -z])


flu_to_frd = frd_to_flu


# ---------------------------------------------------------------- quaternions
def quat_multiply(a, b) -> np.ndarray:
    """Hamilton product a * b (apply b first, then a)."""
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return np.array([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw])


def quat_conjugate(q) -> np.ndarray:
    """The inverse rotation of a unit quaternion."""
    return np.asarray(q, float) * [1.0, -1.0, -1.0, -1.0]


def quat_ned_frd_to_enu_flu(q_wxyz) -> np.ndarray:
    """Attitude FRD->NED (MAVLink's) to FLU->ENU (the sim's), normalized, w >= 0."""
    q = quat_multiply(quat_multiply(_Q_ENU_NED, np.asarray(q_wxyz, float)), _Q_FLU_FRD)
    q /= np.linalg.norm(q)
    return -q if q[0] < 0 else q


quat_enu_flu_to_ned_frd = quat_ned_frd_to_enu_flu   # the same two 180-degree turns undo themselves


def quat_from_axis_angle(axis, angle_rad: float) -> np.ndarray:
    axis = np.asarray(axis, float)
    n = np.linalg.norm(axis)
    if n < 1e-12 or angle_rad == 0.0:
        return np.array([1.0, 0.0, 0.0, 0.0])
    s = math.sin(angle_rad / 2) / n
    return np.array([math.cos(angle_rad / 2), axis[0] * s, axis[1] * s, axis[2] * s])


def rotate(q_wxyz, v) -> np.ndarray:
    """A body vector into the world frame of the quaternion (body -> world)."""
    qv = quat_multiply(quat_multiply(q_wxyz, [0.0, *v]), quat_conjugate(q_wxyz))
    return qv[1:]


def rotate_inverse(q_wxyz, v) -> np.ndarray:
    """A world vector into the body frame of the quaternion (world -> body)."""
    return rotate(quat_conjugate(q_wxyz), v)


# ---------------------------------------------------------------- Euler angles
def quat_to_euler_rpy(q_wxyz) -> tuple[float, float, float]:
    """Roll, pitch, yaw [rad] (Z-Y-X, intrinsic) of a body->world quaternion, in that quaternion's frames."""
    w, x, y, z = (float(a) for a in q_wxyz)
    roll = math.atan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y))
    pitch = math.asin(max(-1.0, min(1.0, 2 * (w * y - z * x))))
    yaw = math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
    return roll, pitch, yaw


def euler_rpy_to_quat(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """The body->world quaternion of Z-Y-X Euler angles [rad] (inverse of quat_to_euler_rpy)."""
    cr, sr, cp, sp, cy, sy = (math.cos(roll / 2), math.sin(roll / 2), math.cos(pitch / 2), math.sin(pitch / 2),
                              math.cos(yaw / 2), math.sin(yaw / 2))
    return np.array([cr * cp * cy + sr * sp * sy, sr * cp * cy - cr * sp * sy, cr * sp * cy + sr * cp * sy,
                     cr * cp * sy - sr * sp * cy])


def yaw_enu_to_ned(yaw_enu_rad: float) -> float:
    """Heading from ENU (0 = east, counter-clockwise) to NED (0 = north, clockwise), in (-pi, pi];
    the same function goes back."""
    return math.atan2(math.cos(yaw_enu_rad), math.sin(yaw_enu_rad))


yaw_ned_to_enu = yaw_enu_to_ned


# ---------------------------------------------------------------- motor order
#: where each of the sim's motors (1 front-right CCW, 2 back-left CCW, 3 front-left CW, 4 back-right
#: CW: the PX4 / ArduPilot quad-X order) sits in another order, as 0-based indices into it
MOTOR_ORDERS = {
    "sim": (0, 1, 2, 3), "px4": (0, 1, 2, 3), "ardupilot": (0, 1, 2, 3),
    "crazyflie": (0, 2, 3, 1),    # Bitcraze: M1 front-right, M2 back-right, M3 back-left, M4 front-left
    "betaflight": (1, 2, 3, 0),   # Betaflight quad-X: 1 back-right, 2 front-right, 3 back-left, 4 front-left
    "motor_test": (0, 2, 3, 1),   # ArduPilot's DO_MOTOR_TEST sequence: clockwise from the front right
}


def motors_to_sim_order(values, order: str) -> np.ndarray:
    """Per-motor values (last axis: 4 motors) from another vehicle's motor order into the sim's."""
    if order not in MOTOR_ORDERS:
        raise ValueError(f"unknown motor order {order!r}: use one of {sorted(MOTOR_ORDERS)}")
    return np.asarray(values)[..., list(MOTOR_ORDERS[order])]


def motors_from_sim_order(values, order: str) -> np.ndarray:
    """The inverse of motors_to_sim_order: per-motor values from the sim's order into `order`."""
    out = np.empty_like(np.asarray(values))
    out[..., list(MOTOR_ORDERS[order])] = np.asarray(values)
    return out
