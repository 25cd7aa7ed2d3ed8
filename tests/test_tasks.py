"""The task mix: race gates, orbit, follow, formation, obstacles, many drones in one space."""
import json
import math

import numpy as np
import pytest

from flight.course import CourseError, load_course, parse_course
from sim.core import GATE_FLOATS, OBS_GATES, OBS_OBSTACLES, TASKS, SimError, gate_check, neighbors, obs_slice, observe
from sim.env import DroneEnv, course_task, parse_tasks, task_config

GATE = np.array([0, 0, 2, 1, 0, 0, 0.5, 0.5], np.float32)   # at (0, 0, 2), flown towards +x, 1 m opening
FRAME_M, RADIUS_M = 0.15, 0.1


def _one(task: str, n: int = 1, **overrides) -> DroneEnv:
    return DroneEnv(n, "crazyflie21", "ctbr", task={"task_prob": parse_tasks(task), **overrides}, randomize=False)


# --- gates -----------------------------------------------------------------------------------
@pytest.mark.parametrize("p0, p1, expected, why", [
    ((-0.3, 0.0, 2.0), (0.3, 0.0, 2.0), 1, "straight through the middle"),
    ((-0.3, 0.35, 2.3), (0.3, 0.35, 2.3), 1, "near the corner, the whole drone inside the opening"),
    ((0.3, 0.0, 2.0), (-0.3, 0.0, 2.0), -1, "through the opening backwards"),
    ((-0.3, 0.45, 2.0), (0.3, 0.45, 2.0), -2, "the drone's side clips the frame"),
    ((-0.3, 0.0, 2.65), (0.3, 0.0, 2.65), -2, "through the top bar"),
    ((0.3, 0.0, 2.65), (-0.3, 0.0, 2.65), -2, "through the top bar backwards: a frame hit too"),
    ((-0.3, 1.5, 2.0), (0.3, 1.5, 2.0), 0, "beside the gate"),
    ((-0.6, 0.0, 2.0), (-0.1, 0.0, 2.0), 0, "not yet at the plane"),
    ((-0.5, 0.0, 2.0), (0.0, 0.0, 2.0), 1, "ending exactly on the plane counts as through"),
    ((0.0, 0.0, 2.0), (0.5, 0.0, 2.0), 0, "so the next step, leaving the plane, does not count again"),
])
def test_gate_rule_on_hand_made_paths(p0, p1, expected, why):
    assert gate_check(GATE, p0, p1, RADIUS_M, FRAME_M) == expected, why


def _race_env(gate_x_m: float = 0.0):
    """One nominal drone racing a one-gate course in a 10 x 10 x 6 m box."""
    course = {"format": "skyloop.course/1", "name": "one", "bounds_m": {"min": [-5, -5, 0], "max": [5, 5, 6]},
              "start": {"pos_enu_m": [-3, 0, 0], "yaw_deg": 0}, "laps": 1,
              "gates": [{"centre_enu_m": [gate_x_m, 0, 2], "yaw_deg": 0, "inner_size_m": 1.0}]}
    env = DroneEnv(1, "crazyflie21", "ctbr", task={"task_prob": parse_tasks("race")}, randomize=False,
                   course=parse_course(course))
    env.reset(seed=0)
    return env


def _fly_through(env, pos, vel):
    env.set_state(0, pos_enu_m=pos, vel_enu_m_s=vel, quat_wxyz=[1, 0, 0, 0], omega_flu_rad_s=[0, 0, 0])
    env.core.drone["prev_pos_enu_m"][:, 0] = pos      # a teleport: no path, no progress since the last step
    env.core.drone["prev_dist_m"][0, 0] = np.linalg.norm(env.core.drone["target_enu_m"][:, 0] - pos)
    hover = float(env.core.drone["hover_action"][0, 0])
    return env.step(np.array([[hover, 0, 0, 0]], np.float32))


def test_a_race_drone_passes_its_gate_forwards_and_finishes():
    env = _race_env()
    obs0 = env.core.obs[0].copy()
    gates = obs0[obs_slice("gates")].reshape(OBS_GATES, -1)
    assert gates[0, -1] == 1.0 and gates[1, -1] == 0.0, "one gate left to pass: one slot present"
    _obs, reward, term, _trunc, info = _fly_through(env, [-0.05, 0, 2], [8, 0, 0])
    assert term[0] and info["episode"]["success"][0] and not info["episode"]["crash"][0]
    assert info["episode"]["gates"][0] == 1 and TASKS[info["episode"]["task"][0]] == "race"
    assert reward[0] > 4.0, "the gate bonus was paid"


def test_a_race_drone_that_goes_through_backwards_crashes():
    env = _race_env()
    _obs, reward, term, _trunc, info = _fly_through(env, [0.05, 0, 2], [-8, 0, 0])
    assert term[0] and info["episode"]["crash"][0] and info["episode"]["collision"][0]
    assert info["episode"]["gates"][0] == 0 and reward[0] < 0


def test_a_race_drone_that_hits_the_frame_crashes():
    env = _race_env()
    _obs, _r, term, _trunc, info = _fly_through(env, [-0.05, 0.55, 2], [8, 0, 0])
    assert term[0] and info["episode"]["crash"][0]


def test_only_the_next_gate_must_be_flown_forwards_the_others_are_solid_frames_round_air():
    """After gate 0, a drone crossing gate 0's opening again (backwards, on its way round) flies on;
    touching gate 0's frame still ends the race."""
    course = {"format": "skyloop.course/1", "name": "two", "bounds_m": {"min": [-5, -5, 0], "max": [5, 5, 6]},
              "start": {"pos_enu_m": [-3, 0, 0], "yaw_deg": 0}, "laps": 1,
              "gates": [{"centre_enu_m": [0, 0, 2], "yaw_deg": 0, "inner_size_m": 1.0},
                        {"centre_enu_m": [0, 3, 2], "yaw_deg": 180, "inner_size_m": 1.0}]}
    for y_m, crashes in ((0.0, False), (0.55, True)):
        env = DroneEnv(1, "crazyflie21", "ctbr", task={"task_prob": parse_tasks("race")}, randomize=False,
                       course=parse_course(course))
        env.reset(seed=0)
        env.core.drone["next_gate"][0, 0] = 1
        _obs, _r, term, _trunc, info = _fly_through(env, [0.05, y_m, 2], [-8, 0, 0])
        assert bool(term[0]) == crashes, f"backwards past gate 0 at y = {y_m} m"
        if crashes:
            assert info["episode"]["crash"][0] and info["episode"]["collision"][0]


def _random_courses(n, **task):
    env = DroneEnv(n, "size_family", "ctbr", task={"task_prob": parse_tasks("race"), **task}, seed=3)
    env.reset(seed=3)
    return env


def _assert_no_leg_through_another_gates_frame(env) -> int:
    """Checks every straight leg between successive gates of every space's course; returns how many."""
    frame_m, legs = env.task["gate_frame_m"], 0
    for space in range(env.core.n_spaces):
        gates = env.core.gates[space, :env.core.n_gates[space]]
        for k in range(len(gates) - 1):
            for j, other in enumerate(gates):
                if j not in (k, k + 1):
                    assert gate_check(other, gates[k, :3], gates[k + 1, :3], 0.0, frame_m) != -2, (space, k, j)
            legs += 1
    return legs


def test_random_courses_have_no_leg_through_another_gates_frame():
    assert _assert_no_leg_through_another_gates_frame(_random_courses(256)) > 256, "random courses of 3 to 6 gates"


def _split_s_pairs(env):
    """(upper-or-first gate, the gate straight under or over it) of every random course."""
    pairs = []
    for space in range(env.core.n_spaces):
        gates = env.core.gates[space, :env.core.n_gates[space]]
        pairs += [(a, b) for a, b in zip(gates[:-1], gates[1:]) if np.allclose(a[:2], b[:2], atol=1e-4)]
    return pairs


def test_random_courses_put_a_split_s_in_only_when_asked_and_it_can_be_flown():
    """A split-S (race7's gates 4 and 5): the next gate straight under or over the last, flown the other
    way, both frames apart, room beyond the first gate to turn in the box; legs stay clear of frames."""
    assert task_config()["gate_split_s_prob"] == 0.0
    assert not _split_s_pairs(_random_courses(512))
    env = _random_courses(512, gate_split_s_prob=0.5)
    pairs, frame_m, bounds = _split_s_pairs(env), env.task["gate_frame_m"], np.array(env.task["bounds_m"])
    assert len(pairs) > 0.1 * env.core.n_spaces
    for a, b in pairs:
        assert np.dot(a[3:6], b[3:6]) == pytest.approx(-1.0, abs=1e-5)              # flown the other way
        assert abs(a[2] - b[2]) >= 2 * a[7] + 2 * frame_m + 0.5 - 1e-4              # frames 0.5 m apart
        beyond = a[:2] + 2.0 * a[3:5]                                                # room to turn
        assert np.all(np.abs(beyond) <= bounds[:2]) and min(a[2], b[2]) > a[7]
    _assert_no_leg_through_another_gates_frame(env)


# --- collisions and sensing -----------------------------------------------------------------
def test_drones_touching_exactly_do_not_collide_and_a_hair_closer_do():
    r = np.array([0.25, 0.25], np.float32)
    apart = np.array([[0, 0, 1], [0.5, 0, 1]], np.float32)      # surface distance exactly 0
    hit, ids, dist = neighbors(apart, r, 1.0)
    assert not hit.any() and ids[0, 0] == 1 and dist[0, 0] == 0.0
    closer = apart.copy()
    closer[1, 0] = np.nextafter(np.float32(0.5), np.float32(0))
    hit, _ids, _dist = neighbors(closer, r, 1.0)
    assert hit.all()


@pytest.mark.parametrize("seed", range(6))
def test_the_grid_gives_the_same_answers_as_all_pairs(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 600))
    if seed % 2:   # drones exactly on cell boundaries and on top of each other
        pos = rng.integers(-4, 5, (n, 3)).astype(np.float32) * np.float32(1.2)
    else:
        pos = rng.uniform(-8, 8, (n, 3)).astype(np.float32)
    radius = rng.uniform(0.03, 0.45, n).astype(np.float32)
    sense = float(rng.uniform(0.0, 2.0))
    grid, brute = neighbors(pos, radius, sense, use_grid=True), neighbors(pos, radius, sense, use_grid=False)
    assert np.array_equal(grid[0], brute[0])
    assert np.array_equal(grid[1], brute[1])
    assert np.array_equal(grid[2], brute[2])
    assert grid[0].any() or seed % 2 == 0


def test_flying_into_a_sphere_is_a_crash_and_a_near_miss_is_sensed():
    env = _one("obstacles")
    env.reset(seed=3)
    c = env.core
    assert c.n_obstacles[0] > 0, "an obstacles episode has spheres"
    centre, radius = c.obstacles[0, 0, :3].copy(), float(c.obstacles[0, 0, 3])
    me = float(c.drone["radius_m"][0, 0])
    hover = float(c.drone["hover_action"][0, 0])
    # 5 cm of air between the drone and the sphere (above it): no crash, and it is the nearest thing seen
    env.set_state(0, pos_enu_m=centre + [0, 0, radius + me + 0.05], vel_enu_m_s=[0, 0, 0], quat_wxyz=[1, 0, 0, 0])
    _obs, _r, term, _tr, _info = env.step(np.array([[hover, 0, 0, 0]], np.float32))
    assert not term[0]
    seen = env.core.obs[0, obs_slice("obstacles")].reshape(OBS_OBSTACLES, -1)
    assert seen[0, 4] == 1.0 and abs(seen[0, 3] - radius) < 1e-6
    assert np.linalg.norm(seen[0, :3]) == pytest.approx(radius + me + 0.05, abs=0.02)
    # inside it: a crash, recorded as a collision
    env.set_state(0, pos_enu_m=centre + [0, 0, radius], vel_enu_m_s=[0, 0, 0], quat_wxyz=[1, 0, 0, 0])
    _obs, _r, term, _tr, info = env.step(np.array([[hover, 0, 0, 0]], np.float32))
    assert term[0] and info["episode"]["collision"][0]


def test_obstacle_spread_scatters_the_spheres_about_the_way_to_the_goal():
    """obstacle_spread_m (the curriculum widens it first): how far sideways of the start -> goal line
    the spheres lie; the median distance follows it."""
    def median_off_line_m(spread_m):
        env = DroneEnv(500, "size_family", "ctbr", task={"task_prob": parse_tasks("obstacles"),
                                                         "obstacle_spread_m": spread_m}, seed=4)
        env.reset(seed=4)
        d, off = env.core.drone, []
        for i in range(500):
            a, b = d["pos_enu_m"][:, i], d["target_enu_m"][:, i]
            u = (b - a) / np.linalg.norm(b - a)
            for c in env.core.obstacles[i, :env.core.n_obstacles[i], :3]:
                off.append(np.linalg.norm((c - a) - ((c - a) @ u) * u))
        return np.median(off)
    narrow, default, wide = (median_off_line_m(s) for s in (0.3, task_config()["obstacle_spread_m"], 2.0))
    assert 0.2 < narrow < 0.5 and 0.6 < default < 1.1 and wide > 1.5, (narrow, default, wide)


def test_drones_in_one_space_see_and_hit_each_other():
    env = _one("hover", n=2, drones_per_space=2)
    env.reset(seed=0)
    hover = float(env.core.drone["hover_action"][0, 0])
    me = float(env.core.drone["radius_m"][0, 0])
    for i, x in enumerate((0.0, 2 * me + 0.3)):
        env.set_state(i, pos_enu_m=[x, 0, 2], vel_enu_m_s=[0, 0, 0], quat_wxyz=[1, 0, 0, 0])
    act = np.array([[hover, 0, 0, 0]] * 2, np.float32)
    _obs, _r, term, _tr, _info = env.step(act)
    assert not term.any()
    seen = env.core.obs[0, obs_slice("obstacles")].reshape(OBS_OBSTACLES, -1)
    assert seen[0, 4] == 1.0 and seen[0, 3] == pytest.approx(me)      # the other drone, by its radius
    env.set_state(1, pos_enu_m=[me, 0, 2], vel_enu_m_s=[0, 0, 0], quat_wxyz=[1, 0, 0, 0])
    _obs, _r, term, _tr, info = env.step(act)
    assert term.all() and info["episode"]["collision"].all()


def test_512_drones_in_one_space_start_apart_and_fly_all_tasks():
    env = DroneEnv(512, "size_family", "ctbr", task={"task_prob": parse_tasks("all"), "bounds_m": [20, 20, 10],
                                                     "drones_per_space": 512})
    env.reset(seed=1)
    d = env.core.drone
    assert d["collided"][0].sum() == 0, "nobody starts inside anything"
    assert set(np.unique(d["task_id"][0]).astype(int)) == set(range(len(TASKS)))
    slots = env.core.formation[0]
    gaps = np.linalg.norm(slots[:, None] - slots[None], axis=-1) + np.eye(len(slots)) * 1e9
    assert gaps.min() > 2 * 1.5 * 0.3 - 1e-3, "formation slots leave room for the largest drones"
    for _ in range(50):
        env.step(np.tile([d["hover_action"][0, 0], 0, 0, 0], (512, 1)).astype(np.float32))
    assert np.isfinite(env.core.obs).all()


# --- tasks ------------------------------------------------------------------------------------
def test_task_mix_frequencies_match_the_config():
    weights = {"hover": 4, "race": 1, "orbit": 2, "follow": 1, "formation": 1, "obstacles": 1}
    env = DroneEnv(20000, "size_family", "ctbr", task={"task_prob": parse_tasks(weights)})
    env.reset(seed=5)
    counts = np.bincount(env.core.drone["task_id"][0].astype(int), minlength=len(TASKS))
    p = np.array([weights[t] for t in TASKS], float) / sum(weights.values())
    expected = p * 20000
    assert np.all(np.abs(counts - expected) < 4 * np.sqrt(expected * (1 - p))), (counts, expected)


def test_parse_tasks_names_the_valid_tasks():
    assert parse_tasks("hover") == [1.0, 0, 0, 0, 0, 0]
    assert parse_tasks("race:3,orbit") == [0, 3.0, 1.0, 0, 0, 0]
    with pytest.raises(SimError, match="formation"):
        parse_tasks("hover,dance")
    with pytest.raises(SimError):
        DroneEnv(4, task={"task_prob": [0] * len(TASKS)})


def test_orbit_and_follow_targets_move_and_are_observed():
    for task in ("orbit", "follow"):
        env = _one(task, n=64)
        env.reset(seed=2)
        d = env.core.drone
        t0 = d["target_enu_m"].copy()
        speed = np.linalg.norm(d["target_vel_enu_m_s"], axis=0)
        assert np.mean(speed > 0.05) > 0.9       # a few start at a turning point of their curve (box corners)
        if task == "orbit":
            r = np.linalg.norm(d["target_enu_m"][:2] - d["move_centre_enu_m"][:2], axis=0)
            assert np.allclose(r, d["move_amp_m"][0], atol=1e-4)
            assert np.all(speed <= task_config()["orbit_speed_m_s_range"][1] + 1e-4)
        else:
            assert np.all(speed <= task_config()["follow_speed_m_s_max"] + 1e-4)
        hover = d["hover_action"][0]
        env.step(np.stack([hover, 0 * hover, 0 * hover, 0 * hover], 1).astype(np.float32))
        assert np.all(np.linalg.norm(d["target_enu_m"] - t0, axis=0) > 0)
        seen = env.core.obs[:, obs_slice("target_vel_body_m_s")]
        assert np.allclose(np.linalg.norm(seen, axis=1), np.linalg.norm(d["target_vel_enu_m_s"], axis=0), atol=1e-4)


def test_orbit_and_follow_targets_start_as_near_as_a_hover_goal():
    """A tracking task starts within reach (target_dist_m_range, as a hover goal does): drawn anywhere
    in the box, a target 6 m off could not be on track 70 % of a 6 s episode at any speed."""
    near_m = task_config()["target_dist_m_range"][1]
    for task in ("orbit", "follow"):
        env = DroneEnv(1000, "size_family", "ctbr", task={"task_prob": parse_tasks(task)}, seed=3)
        env.reset(seed=3)
        d = env.core.drone
        start_m = np.linalg.norm(d["target_enu_m"] - d["pos_enu_m"], axis=0)
        assert np.median(start_m) < near_m, task
        assert np.mean(start_m < near_m + 0.5) > 0.9, task      # a few more: a curve kept inside the box


def test_an_unflown_orbit_is_a_failure_not_a_success():
    env = _one("orbit", n=16, episode_s=1.0)
    env.reset(seed=0)
    hover = env.core.drone["hover_action"][0]
    act = np.stack([hover, 0 * hover, 0 * hover, 0 * hover], 1).astype(np.float32)
    for _ in range(int(1.0 * env.control_hz)):
        _o, _r, _t, trunc, info = env.step(act)
    assert "episode" in info and not info["episode"]["success"].any()


# --- courses ------------------------------------------------------------------------------------
def test_course_validation_names_the_gate_and_field():
    good = json.load(open(load_course("hall").path))
    bad = json.loads(json.dumps(good))
    bad["gates"][2]["centre_enu_m"] = [30.0, 0.0, 2.0]          # outside the hall
    bad["gates"][3]["inner_size_m"] = 0.0                       # a zero size
    del bad["gates"][4]["yaw_deg"]                              # a missing field
    bad["gates"][6]["centre_enu_m"] = bad["gates"][5]["centre_enu_m"]   # two gates on top of each other
    with pytest.raises(CourseError) as err:
        parse_course(bad)
    text = str(err.value)
    for expected in ("gates[2]", "outside bounds_m", "gates[3].inner_size_m", "gates[4].yaw_deg",
                     "gates[5] and gates[6] overlap"):
        assert expected in text, (expected, text)


def test_the_sim_refuses_a_course_outside_its_box():
    env = _one("race")
    gate = np.array([[50, 0, 2, 1, 0, 0, 0.5, 0.5]], np.float32)
    with pytest.raises(SimError, match="gate 0"):
        env.core.set_course(gate)


@pytest.mark.parametrize("name, lap_m", [("race7", (70, 80)), ("hall", (60, 80))])
def test_the_racing_layouts_load_and_every_gate_is_reachable(name, lap_m):
    course = load_course(name)
    centres = np.array([g.centre_enu_m for g in course.gates])
    loop = float(np.linalg.norm(np.diff(np.vstack([centres, centres[:1]]), axis=0), axis=1).sum())
    assert lap_m[0] <= loop <= lap_m[1]
    size = course.bounds_max_enu_m - course.bounds_min_enu_m
    if name == "race7":
        assert len(course.gates) == 7 and np.allclose(size, [30, 30, 8])
    for k, g in enumerate(course.gates):     # each opening can be entered and left along its normal, in the box
        for side in (-1.5, 1.5):
            assert course.inside(g.centre_enu_m + side * g.normal_enu, margin_m=0.3), (name, k, side)
    # and the sim flies it: every gate is a race start, and a drone placed before it passes it
    task, _offset, gates = course_task(course, task_config(task_prob=parse_tasks("race")))
    env = DroneEnv(1, "crazyflie21", "ctbr", task=task, randomize=False, course=course)
    env.reset(seed=0)
    for k, g in enumerate(gates):
        env.core.drone["next_gate"][0, 0] = k
        env.core.drone["gates_passed"][0, 0] = 0
        start = g[:3] - 0.05 * g[3:6]
        _obs, _r, term, _tr, info = _fly_through(env, start, 8 * g[3:6])
        assert int(env.core.drone["gates_passed"][0, 0]) == 1 or (term[0] and info["episode"]["gates"][0] == 1), k
        env.reset(seed=k + 1)


def test_observe_for_a_real_vehicle_matches_the_sim_in_a_race():
    env = _race_env(gate_x_m=2.0)
    d = env.core.drone
    state = env.state(0)
    gate = env.core.gates[0, 0]
    obs = observe(state["pos_enu_m"], state["vel_enu_m_s"], state["quat_wxyz"], state["omega_flu_rad_s"],
                  d["target_enu_m"][:, 0], d["action_hist"][:, 0], d["hover_action"][0, 0],
                  gates=gate[None], obstacles=None)
    assert np.allclose(obs, env.core.obs[0], atol=1e-6)
    assert gate.shape == (GATE_FLOATS,) and math.isclose(float(np.linalg.norm(gate[3:6])), 1.0, rel_tol=1e-6)
