"""The shaping terms racing and dodging need (task fields, both off by default):
reward_gate_progress_per_m pays a racer per metre flown along the line from the gate it last passed
to its next gate (before the first gate: along that gate's normal), and reward_clearance_per_s costs
rate * (1 - d / clearance_m)^2 per second at surface distance d < clearance_m from any gate frame or
the nearest obstacle. Each test compares one step of the same drones with the term on and off."""
import numpy as np
import pytest

from sim.env import DroneEnv, parse_tasks

N = 32


def make_env(tasks: str, course=None, **terms) -> DroneEnv:
    env = DroneEnv(N, "size_family", action_mode="ctbr", seed=5, course=course,
                   task={"task_prob": parse_tasks(tasks), **terms})
    env.reset(seed=5)
    return env


def hover_actions(env: DroneEnv) -> np.ndarray:
    actions = np.zeros((N, 4), np.float32)
    actions[:, 0] = env.core.drone["hover_action"][0]
    return actions


def step_rewards(env: DroneEnv, place=None) -> np.ndarray:
    if place:
        place(env)
    _obs, reward, term, trunc, _info = env.step(hover_actions(env))
    return reward.copy(), (term | trunc).copy()


def frame_clearance_m(gate: np.ndarray, p: np.ndarray, radius_m: float, frame_m: float) -> float:
    """Surface distance from a sphere to a gate's frame (a flat ring around the opening), by hand."""
    off = p - gate[:3]
    n = gate[3:6]
    s = off @ n
    u, v = abs(-n[1] * off[0] + n[0] * off[1]), abs(off[2])
    hw, hh = gate[6], gate[7]
    if u < hw and v < hh:
        in_plane = min(hw - u, hh - v)
    else:
        in_plane = np.hypot(max(u - hw - frame_m, 0.0), max(v - hh - frame_m, 0.0))
    return float(np.hypot(s, in_plane) - radius_m)


def test_gate_progress_before_the_first_gate_is_the_step_along_its_normal():
    off, on = make_env("race"), make_env("race", reward_gate_progress_per_m=3.0)
    r_off, done = step_rewards(off)
    r_on, _ = step_rewards(on)
    d = on.core.drone
    step_m = d["pos_enu_m"] - d["prev_pos_enu_m"]
    normal = np.stack([on.core.gates[i // on.core.space_size, int(d["next_gate"][0, i]), 3:6] for i in range(N)], 1)
    expected = 3.0 * (step_m * normal).sum(0)
    keep = ~done & (d["gates_passed"][0] == 0)
    assert keep.sum() > N // 2 and np.abs(expected[keep]).max() > 3e-3   # they move, so the term is not 0
    np.testing.assert_allclose(r_on[keep] - r_off[keep], expected[keep], rtol=0, atol=2e-5)


def test_gate_progress_after_a_gate_follows_the_line_from_that_gate_to_the_next():
    def one_gate_passed(env):
        d = env.core.drone
        d["next_gate"][0] = 3
        d["gates_passed"][0] = 1
    off = make_env("race", course="race7")
    on = make_env("race", course="race7", reward_gate_progress_per_m=2.0)
    r_off, done = step_rewards(off, one_gate_passed)
    r_on, _ = step_rewards(on, one_gate_passed)
    g = on.core.gates[0]
    line = (g[3, :3] - g[2, :3]) / np.linalg.norm(g[3, :3] - g[2, :3])
    normal = g[3, 3:6]
    assert abs(line @ normal) < 0.95          # the line is not the gate's normal: the two rules differ
    d = on.core.drone
    expected = 2.0 * line @ (d["pos_enu_m"] - d["prev_pos_enu_m"])
    keep = ~done
    assert keep.sum() > N // 2 and np.abs(expected[keep]).max() > 3e-3
    np.testing.assert_allclose(r_on[keep] - r_off[keep], expected[keep], rtol=0, atol=2e-5)


@pytest.mark.parametrize("tasks", ["hover", "orbit", "formation"])
def test_gate_progress_pays_nothing_off_a_race(tasks):
    r_off, _ = step_rewards(make_env(tasks))
    r_on, _ = step_rewards(make_env(tasks, reward_gate_progress_per_m=3.0))
    np.testing.assert_array_equal(r_on, r_off)


# lateral offsets of the drone's surface from gate 0's frame, in its plane, 5 cm before it; the last two
# sit inside the opening, one near its edge, one at the centre (0.75 m from the frame)
GAPS_M = [0.02, 0.1, 0.2, 0.6]


def place_near_gate_frame(env):
    g = env.core.gates[0, 0]
    n, side = g[3:6], np.array([-g[4], g[3], 0.0])
    for i in range(N):
        r = float(env.core.drone["radius_m"][0, i])
        k = i % (len(GAPS_M) + 2)
        if k < len(GAPS_M):
            lateral = g[6] + 0.15 + r + GAPS_M[k]          # outside the frame (0.15 m wide)
        else:
            lateral = g[6] - r - 0.1 if k == len(GAPS_M) else 0.0
        p = g[:3] - 0.05 * n + lateral * side
        env.set_state(i, pos_enu_m=p, vel_enu_m_s=np.zeros(3), quat_wxyz=[1, 0, 0, 0], omega_flu_rad_s=np.zeros(3))


def test_clearance_costs_its_rate_at_a_gate_frame_and_nothing_beyond_clearance_m():
    rate, clearance = 4.0, 0.3
    off = make_env("race", course="race7")
    on = make_env("race", course="race7", reward_clearance_per_s=rate, clearance_m=clearance)
    r_off, done = step_rewards(off, place_near_gate_frame)
    r_on, _ = step_rewards(on, place_near_gate_frame)
    d, dt = on.core.drone, 1.0 / on.control_hz
    expected = np.zeros(N)
    for i in range(N):
        gap = min(frame_clearance_m(g, d["pos_enu_m"][:, i], float(d["radius_m"][0, i]), on.task["gate_frame_m"])
                  for g in on.core.gates[0, :on.core.n_gates[0]])
        expected[i] = -rate * dt * max(1.0 - max(gap, 0.0) / clearance, 0.0) ** 2
    assert not done.any()
    assert (expected < -0.5 * rate * dt).sum() >= 4 and (expected == 0).sum() >= 4   # near ones pay, far ones not
    np.testing.assert_allclose(r_on - r_off, expected, rtol=0, atol=2e-5)


def test_clearance_costs_its_rate_near_an_obstacle():
    rate, clearance = 4.0, 0.4

    def place_near_sphere(env):
        for i in range(N):
            if env.core.n_obstacles[i] == 0:
                continue
            c, radius = env.core.obstacles[i, 0, :3], env.core.obstacles[i, 0, 3]
            gap = 0.05 + 0.5 * (i % 4) / 3                  # 5 to 55 cm from the sphere's surface
            p = c + np.array([0.0, 0.0, radius + env.core.drone["radius_m"][0, i] + gap])
            env.set_state(i, pos_enu_m=p, vel_enu_m_s=np.zeros(3), quat_wxyz=[1, 0, 0, 0],
                          omega_flu_rad_s=np.zeros(3))

    off = make_env("obstacles")
    on = make_env("obstacles", reward_clearance_per_s=rate, clearance_m=clearance)
    r_off, done = step_rewards(off, place_near_sphere)
    r_on, _ = step_rewards(on, place_near_sphere)
    d, dt = on.core.drone, 1.0 / on.control_hz
    expected = np.zeros(N)
    for i in range(N):
        spheres = on.core.obstacles[i, :on.core.n_obstacles[i]]
        if len(spheres) == 0:
            continue
        gap = (np.linalg.norm(spheres[:, :3] - d["pos_enu_m"][:, i], axis=1) - spheres[:, 3]).min() - d["radius_m"][0, i]
        expected[i] = -rate * dt * max(1.0 - max(gap, 0.0) / clearance, 0.0) ** 2
    keep = ~done
    assert keep.sum() > N // 2 and (expected[keep] < -0.5 * rate * dt).sum() >= 4 and (expected[keep] == 0).sum() >= 2
    np.testing.assert_allclose(r_on[keep] - r_off[keep], expected[keep], rtol=0, atol=2e-5)

