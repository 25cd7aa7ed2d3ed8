"""Frames: NED/FRD (MAVLink) <-> ENU/FLU (the sim), with known vectors and round trips."""
import math

import numpy as np
import pytest

from flight import frames


def test_world_vectors():
    assert np.allclose(frames.ned_to_enu([1, 2, -3]), [2, 1, 3])       # north 1, east 2, 3 m up
    assert np.allclose(frames.enu_to_ned(frames.ned_to_enu([0.3, -2, 5])), [0.3, -2, 5])


def test_body_vectors():
    assert np.allclose(frames.frd_to_flu([0.1, 0.2, 0.3]), [0.1, -0.2, -0.3])  # roll right = roll right
    assert np.allclose(frames.flu_to_frd(frames.frd_to_flu([1, 2, 3])), [1, 2, 3])


def test_level_nose_north_in_ned_is_yaw_90_in_enu():
    q = frames.quat_ned_frd_to_enu_flu([1, 0, 0, 0])
    assert np.allclose(q, [math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)])
    assert np.allclose(frames.rotate(q, [1, 0, 0]), [0, 1, 0])           # forward points north
    assert np.allclose(frames.rotate(q, [0, 0, 1]), [0, 0, 1])           # FLU up is ENU up


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
