"""The race time term (task field reward_race_time_per_s): it costs a racing drone exactly that much per
second, and nothing on the other tasks; at 0 (the default) rewards are unchanged."""
import numpy as np
import pytest

from sim.core import ACTION_SIZE
from sim.env import DroneEnv, parse_tasks


def first_step_rewards(tasks: str, time_term: float) -> tuple[np.ndarray, float]:
    env = DroneEnv(64, "size_family", action_mode="ctbr", seed=3,
                   task={"task_prob": parse_tasks(tasks), "reward_race_time_per_s": time_term})
    env.reset(seed=3)
    _obs, reward, _term, _trunc, _info = env.step(np.zeros((64, ACTION_SIZE), np.float32))
    return reward.copy(), 1.0 / env.control_hz


@pytest.mark.parametrize("tasks,costs", [("race", True), ("hover", False), ("orbit", False), ("obstacles", False)])
def test_the_race_time_term_costs_racers_its_rate_per_second_and_nobody_else(tasks, costs):
    base, dt = first_step_rewards(tasks, 0.0)
    timed, _ = first_step_rewards(tasks, 2.5)
    expected = base - 2.5 * dt if costs else base
    np.testing.assert_allclose(timed, expected, rtol=0, atol=1e-5)
