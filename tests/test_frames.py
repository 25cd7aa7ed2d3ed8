"""Frames: NED/FRD (MAVLink) <-> ENU/FLU (the sim), with known vectors and round trips."""
import math

import numpy as np
import pytest

from skyloop import frames


def test_world_vectors():
    assert np.allclose(frames.ned_to_enu([1, 2, -3]), [2, 1, 3])       # north 1, east 2, 3 m up
    assert np.allclose(frames.enu_to_ned([1, 0, 0]), [0, 1, 0])        # east is NED y
    assert np.allclose(frames.enu_to_ned([0, 0, 2]), [0, 0, -2])       # up is NED -z
    assert np.allclose(frames.enu_to_ned(frames.ned_to_enu([0.3, -2, 5])), [0.3, -2, 5])


def test_body_vectors():
    assert np.allclose(frames.frd_to_flu([0.1, 0.2, 0.3]), [0.1, -0.2, -0.3])  # roll right = roll right
    assert np.allclose(frames.flu_to_frd([0, 1, 0]), [0, -1, 0])               # left is FRD -y
    assert np.allclose(frames.flu_to_frd(frames.frd_to_flu([1, 2, 3])), [1, 2, 3])


def test_level_nose_north_in_ned_is_yaw_90_in_enu():
    q = frames.quat_ned_frd_to_enu_flu([1, 0, 0, 0])
    assert np.allclose(q, [math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)])
    assert np.allclose(frames.rotate(q, [1, 0, 0]), [0, 1, 0])           # forward points north
    assert np.allclose(frames.rotate(q, [0, 0, 1]), [0, 0, 1])           # FLU up is ENU up


def test_level_nose_east_in_enu_is_yaw_90_in_ned():
    q_ned = frames.quat_enu_flu_to_ned_frd([1, 0, 0, 0])
    roll, pitch, yaw = frames.quat_to_euler_rpy(q_ned)
    assert (roll, pitch, yaw) == pytest.approx((0.0, 0.0, math.pi / 2))
    assert np.allclose(frames.rotate(q_ned, [0, 0, 1]), [0, 0, 1])      # FRD down is NED down


def same_angle(a_deg, b_deg):
    return abs((a_deg - b_deg + 180.0) % 360.0 - 180.0) < 1e-6


@pytest.mark.parametrize("yaw_enu_deg,yaw_ned_deg", [(0, 90), (90, 0), (180, -90), (-90, 180), (135, -45), (30, 60)])
def test_yaw_between_enu_and_ned(yaw_enu_deg, yaw_ned_deg):
    got = math.degrees(frames.yaw_enu_to_ned(math.radians(yaw_enu_deg)))
    assert same_angle(got, yaw_ned_deg)
    assert same_angle(math.degrees(frames.yaw_ned_to_enu(math.radians(got))), yaw_enu_deg)
    q = frames.euler_rpy_to_quat(0, 0, math.radians(yaw_enu_deg))       # the same heading, as a quaternion
    assert same_angle(math.degrees(frames.quat_to_euler_rpy(frames.quat_enu_flu_to_ned_frd(q))[2]), yaw_ned_deg)


@pytest.mark.parametrize("rpy", [(0.3, 0, 0), (0, 0.4, 0), (0, 0, 1.0), (0.2, -0.3, 2.5)])
def test_attitudes_agree_on_every_body_axis(rpy):
    q_ned = frames.euler_rpy_to_quat(*rpy)
    q_enu = frames.quat_ned_frd_to_enu_flu(q_ned)
    for v_frd in ([1, 0, 0], [0, 1, 0], [0, 0, 1]):
        world_ned = frames.rotate(q_ned, v_frd)
        assert np.allclose(frames.rotate(q_enu, frames.frd_to_flu(v_frd)), frames.ned_to_enu(world_ned))
    assert np.allclose(frames.quat_enu_flu_to_ned_frd(q_enu), q_ned if q_ned[0] >= 0 else -q_ned)
    assert np.allclose(frames.quat_to_euler_rpy(q_ned), rpy)
    # a right roll in FRD is a right roll in FLU: the same physical tilt shows as -roll about FLU x
    roll_enu, pitch_enu, _ = frames.quat_to_euler_rpy(q_enu)
    assert roll_enu == pytest.approx(rpy[0], abs=1e-9) and pitch_enu == pytest.approx(-rpy[1], abs=1e-9)


def test_random_round_trips_and_rotation_inverses():
    rng = np.random.default_rng(0)
    for _ in range(200):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        q = q if q[0] >= 0 else -q
        v = rng.normal(size=3)
        assert np.allclose(frames.quat_ned_frd_to_enu_flu(frames.quat_enu_flu_to_ned_frd(q)), q)
        assert np.allclose(frames.rotate_inverse(q, frames.rotate(q, v)), v)
        assert np.allclose(frames.quat_multiply(q, frames.quat_conjugate(q)), [1, 0, 0, 0])
        # a world vector seen from the body is the same physical vector in either convention
        assert np.allclose(frames.frd_to_flu(frames.rotate_inverse(frames.quat_enu_flu_to_ned_frd(q),
                                                                   frames.enu_to_ned(v))),
                           frames.rotate_inverse(q, v))
        assert np.allclose(frames.euler_rpy_to_quat(*frames.quat_to_euler_rpy(q)), q) or \
            np.allclose(frames.euler_rpy_to_quat(*frames.quat_to_euler_rpy(q)), -q)


def test_axis_angle_known_rotations():
    q = frames.quat_from_axis_angle([0, 0, 2], math.pi / 2)                # the axis need not be unit
    assert np.allclose(frames.rotate(q, [1, 0, 0]), [0, 1, 0])
    assert np.allclose(frames.quat_from_axis_angle([0, 0, 0], 1.0), [1, 0, 0, 0])
    # a body rate about FRD x (roll right) turns FLU's left axis up: the FLU rate about x has the same sign
    w_flu = frames.frd_to_flu([1.0, 0, 0])
    dq = frames.quat_from_axis_angle(w_flu, 0.1)
    assert frames.rotate(dq, [0, 1, 0])[2] > 0.09
