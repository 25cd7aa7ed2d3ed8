"""The success-driven curriculum (sim/curriculum.py): tasks start at their easiest stage, move one
stage on when their measured success reaches the threshold (never sooner than min_updates after
the last move), end on the configured task, and the state survives a checkpoint."""
import numpy as np
import pytest

from sim.curriculum import STAGES, Curriculum, CurriculumError
from sim.env import DroneEnv, parse_tasks, task_config


def full_task():
    return task_config(task_prob=parse_tasks("all"), obstacle_spread_m=0.5)


def test_the_first_update_sends_every_staged_task_its_easiest_stage():
    cur = Curriculum(full_task(), min_updates=3)
    first = cur.update({}, 0)
    assert first["obstacle_spread_m"] == STAGES["obstacles"][0]["obstacle_spread_m"]
    assert first["gate_count_range"] == STAGES["race"][0]["gate_count_range"]
    assert cur.update({}, 1) == {}                                # nothing new: nothing sent
    assert set(cur.level) == {"race", "obstacles", "orbit", "follow"}   # hover and formation have no stages


def test_success_moves_a_task_on_only_after_min_updates_and_only_that_task():
    cur = Curriculum(full_task(), promote_at=0.5, min_updates=3)
    cur.update({}, 0)
    assert cur.update({"obstacles": 0.9}, 1) == {}                # too soon after the start
    assert cur.update({"obstacles": 0.9, "race": 0.4}, 2) == {}
    changes = cur.update({"obstacles": 0.9, "race": 0.4}, 3)      # 3 updates on: obstacles moves, race (0.4) not
    assert changes["obstacle_spread_m"] == STAGES["obstacles"][1]["obstacle_spread_m"]
    assert changes["gate_count_range"] == STAGES["race"][0]["gate_count_range"]
    assert cur.level == {"race": 0, "obstacles": 1, "orbit": 0, "follow": 0}
    assert cur.history == [[3, "obstacles", 1]]


def test_the_last_stage_is_the_configured_task_and_the_curriculum_stops_there():
    task = full_task()
    cur = Curriculum(task, min_updates=1)
    success = {name: 1.0 for name in cur.level}
    for step in range(10):
        cur.update(success, step)
    assert cur.finished()
    fields = cur.fields()
    assert fields["obstacle_spread_m"] == 0.5 and fields["gate_count_range"] == task["gate_count_range"]
    assert fields["follow_speed_m_s_max"] == task["follow_speed_m_s_max"]
    assert cur.update(success, 11) == {}
    assert cur.full_task(dict(task, obstacle_spread_m=2.0))["obstacle_spread_m"] == 0.5


def test_the_state_survives_a_checkpoint_and_goes_on_the_same(tmp_path):
    from sim.policy import Policy, load_checkpoint, save_checkpoint
    cur = Curriculum(full_task(), min_updates=2)
    for step in range(5):
        cur.update({"race": 0.8, "orbit": 0.1}, step)
    env = DroneEnv(8, "size_family", action_mode="ctbr", task=full_task())
    path = str(tmp_path / "c.pt")
    save_checkpoint(path, Policy(), {"curriculum": "success"}, env, 0, {"curriculum": cur.state()})
    _policy, ckpt = load_checkpoint(path)
    back = Curriculum.from_state(ckpt["training_stats"]["curriculum"])
    assert back.state() == cur.state() and back.level["race"] == 2
    assert back.update({}, 6) == cur.fields()                     # a restored curriculum sends its stages again
    cur.update({}, 6)
    for step in range(7, 12):
        assert back.update({"orbit": 0.9}, step) == cur.update({"orbit": 0.9}, step)


def test_a_mode_can_stage_only_the_tasks_it_names():
    cur = Curriculum.from_config("success:obstacles", full_task())
    assert set(cur.level) == {"obstacles"}
    first = cur.update({}, 0)
    assert first == STAGES["obstacles"][0]                 # race etc. fly as configured
    assert set(Curriculum.from_config("success:race, orbit", full_task()).level) == {"race", "orbit"}


def test_bad_modes_and_states_are_refused_with_the_fix():
    from sim.train import ConfigError, TrainConfig
    with pytest.raises(CurriculumError, match="hover has no stages; tasks with stages: race"):
        Curriculum.from_config("success:hover", full_task())
    with pytest.raises(ConfigError, match="curriculum 'sucess' is unknown"):
        TrainConfig(curriculum="sucess").validate()
    with pytest.raises(CurriculumError, match="use 'success'"):
        Curriculum.from_config("linear", full_task())
    with pytest.raises(CurriculumError, match="incomplete"):
        Curriculum.from_state({"mode": "success", "level": {}})


def test_set_task_changes_the_episodes_drawn_afterwards():
    env = DroneEnv(64, "size_family", action_mode="ctbr", seed=2,
                   task=task_config(task_prob=parse_tasks("obstacles"), obstacle_count=8.0))
    env.reset(seed=2)
    assert env.core.n_obstacles.max() > 3
    env.set_task(obstacle_count=1.0)
    assert env.task["obstacle_count"] == 1.0
    env.reset(seed=2)
    assert env.core.n_obstacles.max() == 1
    zero = np.zeros((64, 4), np.float32)
    for _ in range(3):
        env.step(zero)
    assert env.core.n_obstacles.max() == 1


def test_set_task_refuses_what_cannot_change_in_a_live_env():
    from sim.core import SimError
    env = DroneEnv(8, "size_family", action_mode="ctbr")
    with pytest.raises(SimError, match="control_hz"):
        env.set_task(control_hz=50.0)
    with pytest.raises(SimError, match="unknown task fields"):
        env.set_task(obstacle_cuont=1.0)


def test_a_curriculum_run_is_evaluated_on_the_full_task_not_the_stage_it_reached(tmp_path, monkeypatch):
    import io

    import sim.train as train_module
    flown = []
    real_evaluate = train_module.evaluate

    def spy(policy, profile, action_mode, episodes, task, **kw):
        flown.append(dict(task))
        return real_evaluate(policy, profile, action_mode, episodes, task, **kw)
    monkeypatch.setattr(train_module, "evaluate", spy)
    config = train_module.TrainConfig(num_drones=64, total_steps=20_000, threads=1, tasks="race", curriculum="success",
                                      eval_episodes=8, output=str(tmp_path / "c.pt"), time_budget_s=120.0)
    train_module.train(config, progress_stream=io.StringIO())
    configured, easiest = task_config(), STAGES["race"][0]
    assert flown and easiest["gate_count_range"] != configured["gate_count_range"]
    assert flown[-1]["gate_count_range"] == configured["gate_count_range"]
    assert flown[-1]["gate_size_m"] == configured["gate_size_m"]
