"""Courses: validation, gate crossing, and the shipped policy flying the hall course in the sim."""
import json
import math

import numpy as np
import pytest
import torch

from flight.course import CourseError, CourseProgress, gate_crossed, load_course, parse_course
from sim.env import DroneEnv
from sim.train import load_checkpoint


def test_hall_course_loads_with_its_gates_inside_the_hall():
    course = load_course("hall")
    assert len(course.gates) == 7 and course.laps == 1
    size = course.bounds_max_enu_m - course.bounds_min_enu_m
    assert np.allclose(size, [40, 25, 8])
    assert 60 < course.length_m() < 100
    assert all(course.inside(g.centre_enu_m, margin_m=1.0) for g in course.gates)


def test_a_malformed_course_lists_every_problem(tmp_path):
    bad = json.loads(open(load_course("hall").path).read())
    bad["laps"] = 0
    bad["gates"][2]["yaw_deg"] = "north"
    bad["gates"][4]["centre_enu_m"] = [100, 0, 2]
    del bad["bounds_m"]["max"]
    with pytest.raises(CourseError) as err:
        parse_course(bad, "bad.json")
    text = str(err.value)
    for part in ("laps", "gates[2].yaw_deg", "bounds_m.max"):
        assert part in text
    path = tmp_path / "broken.json"
    path.write_text('{"format": "skyloop.course/1", "gates": [')
    with pytest.raises(CourseError, match="not valid JSON"):
        load_course(str(path))
    with pytest.raises(CourseError, match="built-in courses: hall"):
        load_course("no_such_course")


def test_gate_is_passed_only_in_its_direction_and_through_its_opening():
    gate = load_course("hall").gates[0]                  # at (-6, -8, 1.8), flown east, 1.5 m opening
    c = gate.centre_enu_m
    assert gate_crossed(gate, c - [0.3, 0, 0], c + [0.3, 0, 0])
    assert not gate_crossed(gate, c + [0.3, 0, 0], c - [0.3, 0, 0])          # wrong way
    assert not gate_crossed(gate, c + [-0.3, 1.0, 0], c + [0.3, 1.0, 0])     # beside the opening
    assert not gate_crossed(gate, c + [-0.3, 0, 0.9], c + [0.3, 0, 0.9])     # above it
    assert not gate_crossed(gate, c - [0.6, 0, 0], c - [0.3, 0, 0])          # not yet at it


@pytest.mark.parametrize("profile", ["crazyflie21", "camera15"])
def test_the_shipped_policy_flies_the_hall_course_in_the_sim(profile):
    policy, _ = load_checkpoint("flight/policies/default.pt")
    course = load_course("hall")
    env = DroneEnv(1, profile, action_mode="ctbr", randomize=False,
                   task={"bounds_m": [100.0, 100.0, 100.0], "episode_s": 1000.0})
    env.reset(seed=0)
    yaw = course.start_yaw_rad
    env.set_state(0, pos_enu_m=course.start_pos_enu_m, vel_enu_m_s=[0, 0, 0], omega_flu_rad_s=[0, 0, 0],
                  quat_wxyz=[math.cos(yaw / 2), 0, 0, math.sin(yaw / 2)], rotor_rad_s=[0, 0, 0, 0])
    progress = CourseProgress(course)
    t, dt = 0.0, env.core.control_dt_s
    while t < 90.0 and not progress.finished:
        pos = env.state(0)["pos_enu_m"]
        assert course.inside(pos), f"left the hall at {pos}"
        env.set_state(0, target_enu_m=progress.update(pos, t))
        with torch.no_grad():
            action, _ = policy(torch.as_tensor(env.core.obs))
        _obs, _r, term, _trunc, _info = env.step(action.numpy())
        assert not term[0], "crashed"
        t += dt
    assert progress.finished, f"passed {len(progress.passes)} of 7 gates in {t:.0f} s"
    assert [g for g, _ in progress.passes] == list(range(7))
    assert t < 60.0


def test_a_race_trained_policy_aims_at_the_next_gate_and_sees_the_next_two():
    from sim.core import GATE_FLOATS, OBS_GATES
    course = load_course("race7")
    progress = CourseProgress(course, race=True)
    start = course.start_pos_enu_m
    # take-off: straight up, no gates seen (the sim's hover task), until 1 m over the start (within 0.2 m)
    assert np.allclose(progress.update(start, 0.0), start + [0, 0, 1.0])
    assert progress.next_gates(OBS_GATES).shape == (0, GATE_FLOATS)
    assert np.allclose(progress.update(start + [0.1, 0, 0.7], 0.5), start + [0, 0, 1.0])
    assert np.allclose(progress.update(start + [0.1, 0, 0.85], 0.6), course.gates[0].centre_enu_m)
    assert np.allclose(progress.update(start + [0.1, 0, 0.3], 0.7), course.gates[0].centre_enu_m)   # once only
    gates = progress.next_gates(OBS_GATES)
    assert gates.shape == (OBS_GATES, GATE_FLOATS)
    assert np.allclose(gates[1, :3], course.gates[1].centre_enu_m) and np.allclose(gates[0, 3:6], [1, 0, 0])
    g0 = course.gates[0]
    progress.update(g0.centre_enu_m - 0.1 * g0.normal_enu, 1.0)
    assert np.allclose(progress.update(g0.centre_enu_m + 0.1 * g0.normal_enu, 1.1), course.gates[1].centre_enu_m)
    progress.next_gate = progress.total_gates - 1                  # the last gate: one left to see
    assert progress.next_gates(OBS_GATES).shape == (1, GATE_FLOATS)
    # a hover policy's sliding target stays within the lookahead of the drone's projection
    slide = CourseProgress(course)
    assert np.linalg.norm(slide.update(start + [0, 0, 1.8], 0.0) - (start + [0, 0, 1.8])) <= 1.5 + 1e-9
