"""The one place frames are converted. The sim: world ENU (x east, y north, z up), body FLU
(x forward, y left, z up). MAVLink: world NED (x north, y east, z down), body FRD. Quaternions
are `w, x, y, z` and rotate body vectors into the world frame.

Both changes of axes are proper rotations by 180 degrees, each its own inverse:
    ENU <-> NED: swap x and y, negate z  (about the axis (1, 1, 0) / sqrt 2)
    FLU <-> FRD: negate y and z          (about the x axis)
"""
from __future__ import annotations

import math

import numpy as np

_S = math.sqrt(0.5)
_Q_ENU_NED = np.array([0.0, _S, _S, 0.0])      # rotates NED axes onto ENU axes (and back)
_Q_FLU_FRD = np.array([0.0, 1.0, 0.0, 0.0])    # rotates FRD axes onto FLU axes (and back)


def ned_to_enu(v) -> np.ndarray:
    """A world vector (position, velocity, acceleration) from NED to ENU; the same function goes back."""
    x, y, z = (float(a) for a in v)
    return np.array([y, x, -z])


enu_to_ned = ned_to_enu


def frd_to_flu(v) -> np.ndarray:
    """A body vector (body rates, specific force) from FRD to FLU; the same function goes back."""
    x, y, z = (float(a) for a in v)
    return np.array([x, -y, -z])


flu_to_frd = frd_to_flu


def quat_multiply(a, b) -> np.ndarray:
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return np.array([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw])


def quat_ned_frd_to_enu_flu(q_wxyz) -> np.ndarray:
    """Attitude FRD->NED (MAVLink's) to FLU->ENU (the sim's), normalized, w >= 0."""
    q = quat_multiply(quat_multiply(_Q_ENU_NED, np.asarray(q_wxyz, float)), _Q_FLU_FRD)
    q /= np.linalg.norm(q)
    return -q if q[0] < 0 else q


quat_enu_flu_to_ned_frd = quat_ned_frd_to_enu_flu   # the same two 180-degree turns undo themselves


def quat_to_euler_rpy(q_wxyz) -> tuple[float, float, float]:
    """Roll, pitch, yaw [rad] (Z-Y-X, intrinsic) of a body->world quaternion, in that quaternion's frames."""
    w, x, y, z = (float(a) for a in q_wxyz)
    roll = math.atan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y))
    pitch = math.asin(max(-1.0, min(1.0, 2 * (w * y - z * x))))
    yaw = math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
    return roll, pitch, yaw


def euler_rpy_to_quat(roll: float, pitch: float, yaw: float) -> np.ndarray:
    cr, sr, cp, sp, cy, sy = (math.cos(roll / 2), math.sin(roll / 2), math.cos(pitch / 2), math.sin(pitch / 2),
                              math.cos(yaw / 2), math.sin(yaw / 2))
    return np.array([cr * cp * cy + sr * sp * sy, sr * cp * cy - cr * sp * sy, cr * sp * cy + sr * cp * sy,
                     cr * cp * sy - sr * sp * cy])


def rotate(q_wxyz, v) -> np.ndarray:
    """A body vector into the world frame of the quaternion."""
    qv = quat_multiply(quat_multiply(q_wxyz, [0.0, *v]), np.asarray(q_wxyz) * [1, -1, -1, -1])
    return qv[1:]
