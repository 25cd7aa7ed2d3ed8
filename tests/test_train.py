"""The PPO trainer and the evaluator: learning happens, checkpoints round-trip, configs are checked,
and the success metric can fail."""
import io
import json
import os

import numpy as np
import pytest
import torch

from sim import OBS_SIZE
from sim.core import ACTION_SIZE
from sim.env import DroneEnv
from sim.evaluate import evaluate
import sim.train
from sim.train import (CheckpointError, ConfigError, FlatAdam, FlatParameters, FusedActorCritic, Policy, TrainConfig,
                       actor_critic, flat_layout, load_checkpoint, normalize_advantages, parse_overrides,
                       pick_threads, ppo_loss, ppo_loss_gradients, save_checkpoint, train)
from skyloop.cli import main as skyloop

# An easy hover: start near level and slow, so a few seconds of training show.
EASY_TASK = {"init_tilt_max_rad": 0.1, "init_rate_max_rad_s": 0.3, "init_speed_max_m_s": 0.2,
             "ground_start_prob": 0.0}


def random_policy(rng):
    return lambda obs: rng.uniform(-1, 1, (len(obs), ACTION_SIZE)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("train") / "tiny.pt")
    # a fixed number of steps (10-20 s on a laptop), so the test does not depend on the machine's speed; one
    # torch thread, so reruns agree (at 300 k steps, multi-threaded reruns differed enough to fail)
    config = TrainConfig(profile="crazyflie21", num_drones=256, total_steps=1_000_000, threads=1,
                         time_budget_s=300.0, output=out,
                         seed=1, eval_episodes=200, task=dict(EASY_TASK))
    metrics = train(config, progress_stream=io.StringIO())
    return out, config, metrics


def test_tiny_training_beats_random_and_untrained_policies(tiny_run):
    path, config, metrics = tiny_run
    assert metrics["steps"] >= 1_000_000
    policy, ckpt = load_checkpoint(path)
    kw = dict(profile=ckpt["profile"], action_mode=ckpt["action_mode"], episodes=256, task=ckpt["task"])
    trained = evaluate(policy, **kw)
    torch.manual_seed(1)
    untrained = evaluate(Policy(hidden=config.hidden, layers=config.layers, action_mode=config.action_mode), **kw)
    random = evaluate(random_policy(np.random.default_rng(0)), **kw)
    # random actions tumble the drone; the trained policy must hold it much better than either
    assert random["crash_rate"] > 0.9
    assert trained["mean_return"] > random["mean_return"] + 10.0
    assert trained["mean_return"] > untrained["mean_return"] + 3.0
    assert trained["crash_rate"] < 0.5 * random["crash_rate"]


def test_checkpoint_round_trip_gives_identical_actions(tiny_run, tmp_path):
    path, _config, _ = tiny_run
    policy, ckpt = load_checkpoint(path)
    assert ckpt["format"] == "skyloop.policy/1" and ckpt["obs_size"] == OBS_SIZE
    assert ckpt["profile"]["name"] == "crazyflie21" and "randomization" in ckpt["profile"]
    assert ckpt["task"]["init_tilt_max_rad"] == EASY_TASK["init_tilt_max_rad"]
    assert ckpt["sim_git_revision"]
    env = DroneEnv(64, "crazyflie21", action_mode=ckpt["action_mode"])
    obs = torch.as_tensor(env.reset(seed=3)[0].copy())
    # normalization statistics were learned and saved, not left at their defaults
    assert not torch.allclose(policy.obs_mean, torch.zeros(OBS_SIZE))
    again = str(tmp_path / "again.pt")
    save_checkpoint(again, policy, TrainConfig(**{**ckpt["config"]}), env, ckpt["training_steps"], {})
    policy2, _ = load_checkpoint(again)
    with torch.no_grad():
        a1, _ = policy(obs)
        a2, _ = policy2(obs)
    assert torch.equal(a1, a2)
    assert a1.abs().max() <= 1.0


def test_recurrent_checkpoint_round_trip(tmp_path):
    env = DroneEnv(8, "crazyflie21", action_mode="ctbr")
    obs = torch.as_tensor(env.reset(seed=0)[0].copy())
    torch.manual_seed(0)
    policy = Policy(hidden=16, layers=1, recurrent=True)
    config = TrainConfig(hidden=16, layers=1, recurrent=True)
    save_checkpoint(str(tmp_path / "gru.pt"), policy, config, env, 0, {})
    policy2, _ = load_checkpoint(str(tmp_path / "gru.pt"))
    h1, h2 = policy.initial_state(8), policy2.initial_state(8)
    for _ in range(5):
        with torch.no_grad():
            a1, h1 = policy(obs, h1)
            a2, h2 = policy2(obs, h2)
        assert torch.equal(a1, a2)
    assert h1.abs().sum() > 0     # the state is carried, not reset


def test_zero_thrust_policy_scores_zero():
    zero_thrust = lambda obs: np.full((len(obs), ACTION_SIZE), -1.0, np.float32)  # noqa: E731
    result = evaluate(zero_thrust, "size_family", "ctbr", episodes=300)
    assert result["episodes"] == 300
    assert result["success_rate"] == 0.0
    assert sum(b["episodes"] for b in result["per_size"].values()) == 300
    assert set(result["per_size"]) >= {"micro (arm < 6 cm)", "large (arm >= 20 cm)"}


def test_override_parsing():
    c = parse_overrides(["--train.lr", "3e-4", "--train.num_drones", "1024", "--train.recurrent", "true",
                         "--train.action_mode", "motor", "--task.hold_s", "1.0"])
    assert c.lr == 3e-4 and c.num_drones == 1024 and c.recurrent is True and c.action_mode == "motor"
    assert c.task == {"hold_s": 1.0}
    assert TrainConfig().lr != 3e-4          # the default itself is untouched
    with pytest.raises(ConfigError, match="unknown config field 'lrate'"):
        parse_overrides(["--train.lrate", "1"])
    with pytest.raises(ConfigError, match="not a valid"):
        parse_overrides(["--train.num_drones", "many"])
    with pytest.raises(ConfigError, match="needs a value"):
        parse_overrides(["--train.lr"])


@pytest.mark.parametrize("field,value,message", [
    ("num_drones", 0, "num_drones must be at least 1"),
    ("lr", -1.0, "lr must be a positive number"),
    ("action_mode", "thrust", "action_mode must be ctbr or motor"),
    ("gamma", 1.5, "gamma must be in"),
    ("minibatches", 3, "divisible by minibatches"),
    ("epochs", 0.0, "epochs must be positive"),
    ("adv_norm", "none", "adv_norm must be task or batch"),
])
def test_bad_config_values_are_refused_with_the_field_named(field, value, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        train(TrainConfig(**{field: value, "output": str(tmp_path / "x.pt")}), progress_stream=io.StringIO())
    assert not os.path.exists(tmp_path / "x.pt")


def test_cli_train_rejects_bad_values_and_eval_reports_json(tiny_run, capsys, tmp_path):
    assert skyloop(["train", "--train.num_drones", "-5", "-o", str(tmp_path / "x.pt")]) == 1
    assert "num_drones must be at least 1" in capsys.readouterr().err
    assert skyloop(["eval", str(tmp_path / "missing.pt")]) == 1
    assert "no such policy file" in capsys.readouterr().err
    path, _, _ = tiny_run
    png = tmp_path / "eval.png"
    assert skyloop(["eval", path, "--episodes", "64", "--json", "--plot", str(png)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["episodes"] == 64
    assert {"success_rate", "crash_rate", "per_task", "per_size"} <= set(result)
    assert png.stat().st_size > 10_000


def test_corrupt_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable policy checkpoint"):
        load_checkpoint(str(bad))


def test_the_shipped_default_policy_flies_fresh_drones_and_its_onnx_matches():
    from policy_export import load_policy
    here = os.path.join(os.path.dirname(__file__), "..", "flight", "policies")
    policy, ckpt = load_checkpoint(os.path.join(here, "default.pt"))
    assert ckpt["profile"]["name"] == "size_family" and ckpt["eval"]["success_rate"] >= 0.95
    result = evaluate(policy, ckpt["profile"], ckpt["action_mode"], episodes=500, task=ckpt["task"], seed=99)
    assert result["success_rate"] > 0.9 and result["crash_rate"] < 0.05
    onnx = load_policy(os.path.join(here, "default.onnx"), action_modes=("ctbr",))
    obs = DroneEnv(32, "size_family", action_mode="ctbr").reset(seed=5)[0].copy()
    with torch.no_grad():
        expected, _ = policy(torch.as_tensor(obs))
    actions, _ = onnx.run(obs)
    assert np.abs(actions - expected.numpy()).max() < 1e-5


class Payload:
    """Pickles to a call of `open(marker, "w")`: what a crafted checkpoint could run on load."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_crafted_checkpoint_with_a_pickle_payload_is_refused_and_does_not_run(tmp_path, capsys):
    marker = str(tmp_path / "payload_ran")
    crafted = str(tmp_path / "crafted.pt")
    torch.save({"format": "skyloop.policy/1", "obs_size": OBS_SIZE, "payload": Payload(marker)}, crafted)
    with pytest.raises(CheckpointError, match="refused: the file holds Python objects"):
        load_checkpoint(crafted)
    assert skyloop(["eval", crafted, "--episodes", "8"]) == 1
    assert "refused" in capsys.readouterr().err
    assert not os.path.exists(marker)
    # the payload is live: unpickling the file the unsafe way runs it
    torch.load(crafted, weights_only=False)
    assert os.path.exists(marker)


@pytest.mark.parametrize("name", ["default.pt", "default_motor.pt", "generalist.pt"])
def test_the_shipped_checkpoints_are_plain_data(name):
    path = os.path.join(os.path.dirname(__file__), "..", "flight", "policies", name)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["format"] == "skyloop.policy/1" and isinstance(ckpt["config"], dict)
    load_checkpoint(path)


def test_a_checkpoint_with_fields_missing_is_refused_with_them_named(tmp_path):
    path = str(tmp_path / "partial.pt")
    torch.save({"format": "skyloop.policy/1", "obs_size": OBS_SIZE}, path)
    with pytest.raises(CheckpointError, match="missing or of the wrong type: state_dict"):
        load_checkpoint(path)


@pytest.mark.parametrize("layers,recurrent", [(1, False), (2, False), (3, False), (2, True)])
def test_the_training_forward_pass_computes_the_policy_and_critic(layers, recurrent):
    torch.manual_seed(layers)
    policy = Policy(hidden=32, layers=layers, recurrent=recurrent)
    with torch.no_grad():
        policy.mean.weight.normal_(0.0, 0.5)
        policy.obs_mean.normal_(0.0, 0.3)
        policy.obs_var.uniform_(0.2, 3.0)
    obs = torch.as_tensor(DroneEnv(64, "size_family", action_mode="ctbr").reset(seed=2)[0].copy())
    state = policy.initial_state(64)
    hover = obs[:, policy.hover_index]
    mean, value, state_out = actor_critic(policy, policy.normalize(obs), hover, state)
    with torch.no_grad():
        x, expected_state = policy.features(obs, state)
        expected_mean = policy.action_mean(obs, x)
        expected_value = policy.critic(policy.normalize(obs)).squeeze(-1)
    assert torch.allclose(mean, expected_mean, atol=1e-5) and torch.allclose(value, expected_value, atol=1e-5)
    assert mean.abs().max() > 0.1
    if recurrent:
        assert torch.allclose(state_out, expected_state, atol=1e-6)
    # gradients reach the policy's own parameters (what is saved and exported), the same as through nn.Tanh
    (mean.sum() + value.sum()).backward()
    assert policy.actor_body[0].weight.grad.abs().sum() > 0 and policy.critic[0][0].weight.grad.abs().sum() > 0
    fast = [p.grad.clone() for p in policy.parameters() if p.grad is not None]
    policy.zero_grad(set_to_none=True)
    x, _ = policy.features(obs, policy.initial_state(64))
    (policy.action_mean(obs, x).sum() + policy.critic(policy.normalize(obs)).sum()).backward()
    reference = [p.grad for p in policy.parameters() if p.grad is not None]
    assert len(fast) == len(reference)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(fast, reference))
    with torch.no_grad():   # the rollout's no-grad path too
        assert torch.allclose(actor_critic(policy, policy.normalize(obs), hover, state)[0], expected_mean, atol=1e-5)


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("tanh_via_sigmoid", [False, True])
def test_the_written_out_backward_pass_gives_autograds_gradients(layers, tanh_via_sigmoid, monkeypatch):
    monkeypatch.setattr(sim.train, "TANH_VIA_SIGMOID", tanh_via_sigmoid)
    torch.manual_seed(layers)
    policy, reference = Policy(hidden=32, layers=layers), Policy(hidden=32, layers=layers)
    with torch.no_grad():
        policy.mean.weight.normal_(0.0, 0.5)
        policy.log_std.normal_(-1.0, 0.2)
    reference.load_state_dict(policy.state_dict())
    flat = FlatParameters(flat_layout(policy))
    fused = FusedActorCritic(policy, flat)
    B = 300
    x, hover = torch.randn(B, OBS_SIZE), torch.rand(B)
    act, old_logp = torch.randn(B, ACTION_SIZE) * 0.5, torch.randn(B) * 0.5 + 1.0
    adv, ret = torch.randn(B), torch.randn(B)
    config = TrainConfig(ent_coef=0.01)
    with torch.no_grad():
        mean, value = fused.forward(x, hover, keep=True)
        policy_loss, value_loss, g_mean, g_value, g_log_std = ppo_loss_gradients(
            mean, value, policy.log_std.data, act, old_logp, adv, ret, config)
        fused.backward(g_mean, g_value)
        flat.grad(policy.log_std).copy_(g_log_std)
    ref_mean, ref_value, _ = actor_critic(reference, x, hover)
    ref_policy_loss, ref_value_loss, loss = ppo_loss(ref_mean, ref_value, reference.log_std, act, old_logp, adv, ret,
                                                     config)
    loss.backward()
    # the module's own parameters are views of the flat one: the forward pass is the policy's
    assert torch.allclose(mean, ref_mean, atol=1e-6) and torch.allclose(value, ref_value, atol=1e-6)
    assert torch.allclose(policy_loss, ref_policy_loss) and torch.allclose(value_loss, ref_value_loss)
    ratio = (-0.5 * ((act - mean) / policy.log_std.exp()).pow(2).sum(-1) - policy.log_std.sum()
             - ACTION_SIZE * sim.train.LOG_SQRT_2PI - old_logp).exp()
    assert ((ratio < 0.8) | (ratio > 1.2)).float().mean() > 0.2   # clipped and unclipped samples both occur
    expected = torch.cat([p.grad.reshape(-1) for p in flat_layout(reference)])
    assert torch.allclose(flat.param.grad, expected, rtol=1e-4, atol=1e-6)
    # a planted error in one gradient is seen
    g_mean[0, 0] += 0.01
    with torch.no_grad():
        fused.forward(x, hover, keep=True)
        fused.backward(g_mean, g_value)
    assert not torch.allclose(flat.param.grad, expected, rtol=1e-4, atol=1e-6)


def test_flat_adam_steps_as_torch_adam():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(500))
    b = torch.nn.Parameter(a.detach().clone())
    reference, flat = torch.optim.Adam([a], lr=3e-3, eps=1e-5), FlatAdam(b, lr=3e-3)
    for _ in range(20):
        g = torch.randn(500)
        a.grad, b.grad = g.clone(), g.clone()
        reference.step()
        flat.step()
    assert torch.allclose(a, b, atol=1e-7) and not torch.allclose(a, torch.zeros(500))


def test_per_task_advantage_normalization_keeps_a_small_reward_task_at_full_weight():
    # race advantages are ~100x hover's; over the batch hover's nearly vanish, within each task not
    torch.manual_seed(0)
    task = torch.tensor([0.0, 1.0]).repeat_interleave(4000)[torch.randperm(8000)]
    adv = torch.randn(8000) * torch.where(task == 1, 100.0, 1.0) + torch.where(task == 1, 50.0, 0.0)
    per_task, batch = normalize_advantages(adv, task), normalize_advantages(adv)
    for k in (0.0, 1.0):
        a = per_task[task == k]
        assert abs(a.mean().item()) < 1e-4 and abs(a.std(correction=0).item() - 1.0) < 1e-4
    assert batch[task == 0].std().item() < 0.05    # the hover drones' share of the batch gradient
    assert abs(batch.mean().item()) < 1e-4 and abs(batch.std(correction=0).item() - 1.0) < 1e-4   # alike


def test_threads_follow_the_request_or_the_free_cores():
    assert pick_threads(3) == 3
    cpus = len(os.sched_getaffinity(0))
    assert 1 <= pick_threads(0) <= cpus
    assert pick_threads(0, local_processes=64) == 1


def test_bench_train_json_has_the_figures(capsys):
    assert skyloop(["bench", "train", "--seconds", "2", "--snapshot-every", "0", "--episodes", "32",
                    "--env-seconds", "0.3", "--json", "--train.num_drones", "64", "--train.horizon", "16"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"time_to_95_s", "final_success", "steps_per_s", "env_steps_per_s", "train_over_env", "split"}
    assert set(result["split"]) == {"env", "policy", "update"}
    assert 0.9 < sum(result["split"].values()) <= 1.0 and result["steps_per_s"] > 0 and result["env_steps_per_s"] > 0
    assert result["train_over_env"] == pytest.approx(result["steps_per_s"] / result["env_steps_per_s"])
    assert result["time_to_95_s"] is None or result["final_success"] >= 0.95


def test_two_process_gloo_training_keeps_the_weights_identical_on_both_ranks(tmp_path):
    import hashlib
    import subprocess
    import sys
    out = str(tmp_path / "ddp.pt")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "skyloop",
           "train", "-o", out, "--device", "cpu", "--train.num_drones", "32", "--train.horizon", "8",
           "--train.total_steps", "2048", "--train.minibatches", "2", "--train.eval_episodes", "16",
           "--train.threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(out, weights_only=True)
    ddp = ckpt["training_stats"]["ddp"]
    assert ddp["world_size"] == 2
    flat = torch.cat([t.double().reshape(-1) for t in ckpt["state_dict"].values()])
    mine = hashlib.sha256(flat.numpy().tobytes()).hexdigest()
    assert ddp["rank_weight_sha256"] == [mine, mine]
    # both ranks stepped their own env: 2 x 32 drones x 8 steps per update, until 2048 steps
    assert ckpt["training_steps"] == 2048 and ckpt["training_stats"]["updates"] == 4
    assert not torch.equal(ckpt["state_dict"]["obs_mean"], torch.zeros(OBS_SIZE))


def test_a_two_trial_sweep_on_ray_tune_returns_a_best_config(capsys):
    pytest.importorskip("ray.tune", reason="Ray Tune is not installed (pip install -e '.[train]')")
    assert skyloop(["sweep", "--trials", "2", "--time-budget", "1", "--episodes", "32", "--json",
                    "--train.num_drones", "256", "--train.horizon", "16"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["trials"]) == 2 and all("eval" in t for t in result["trials"])
    best = result["best_config"]
    assert set(best) == {"lr", "num_drones", "horizon", "epochs", "minibatches", "gamma", "init_log_std"}
    assert result["best_eval"]["success_rate"] == max(t["eval"]["success_rate"] for t in result["trials"])
    assert result["best_eval"]["steps"] > 0 and result["train_command"].startswith("skyloop train")
