"""Policy export: ONNX and C match PyTorch, the contract round-trips, bad models are refused.

Checkpoints are made in a blink from random weights (scaled up so actions hit the [-1, 1] clip)
and a non-trivial observation normalization (some variances tiny, so the ±10 clamp acts)."""
import argparse
import copy
import ctypes
import json

import numpy as np
import onnx
import pytest
import torch

import sim
from policy_export import PolicyContractError, load_policy
from policy_export import bench, cli as export_cli
from policy_export.c_export import compile_header, export_c
from policy_export.contract import contract_digest, encode_metadata, decode_metadata
from policy_export.export import ParityError, export_onnx, onnx_step, replay, rollout, torch_step
from sim.env import DroneEnv
from sim.train import CheckpointError, Policy, TrainConfig, load_checkpoint, save_checkpoint

HIDDEN = 24


def make_checkpoint(path, recurrent=False, action_mode="ctbr", seed=0, eval_success=None):
    torch.manual_seed(seed)
    policy = Policy(hidden=HIDDEN, layers=2, recurrent=recurrent, action_mode=action_mode)
    with torch.no_grad():
        policy.mean.weight.normal_(0.0, 0.6)  # the trainer's init is near zero: make the head matter
        policy.obs_mean.normal_(0.0, 0.3)
        policy.obs_var.uniform_(0.2, 3.0)
        policy.obs_var[::5] = 1e-4  # these fields leave the +-10 normalization clamp
    config = TrainConfig(hidden=HIDDEN, layers=2, recurrent=recurrent, action_mode=action_mode, num_drones=4)
    save_checkpoint(str(path), policy, config, DroneEnv(4, "size_family", action_mode=action_mode), 123_456,
                    {"success_rate": 0.42})
    if eval_success is not None:  # as the trainer may record an evaluation
        ckpt = torch.load(str(path), weights_only=True)
        ckpt["eval"] = {"success_rate": eval_success}
        torch.save(ckpt, str(path))
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{"mlp": (pt, onnx, h), "gru": (...)}: exported once for the whole file."""
    root = tmp_path_factory.mktemp("export")
    out = {}
    for kind in ("mlp", "gru"):
        pt = make_checkpoint(root / f"{kind}.pt", recurrent=kind == "gru", eval_success=0.97)
        export_onnx(pt, str(root / f"{kind}.onnx"), samples=1024)
        export_c(pt, str(root / f"{kind}.h"), samples=256)
        out[kind] = (pt, str(root / f"{kind}.onnx"), str(root / f"{kind}.h"))
    return out


def fresh_rollout(pt, seed=7, samples=2048):
    policy, ckpt = load_checkpoint(pt)
    state_size = policy.hidden if policy.recurrent else 0
    return policy, rollout(torch_step(policy), ckpt, state_size, samples, seed=seed), state_size


@pytest.mark.parametrize("kind", ["mlp", "gru"])
def test_onnx_matches_torch_on_fresh_sim_rollouts_through_the_flight_loader(models, kind):
    pt, path, _ = models[kind]
    policy, data, state_size = fresh_rollout(pt)
    loaded = load_policy(path)
    actions = replay(lambda obs, state: loaded.run(obs, state), data, state_size)
    assert np.abs(actions - data.actions).max() <= 1e-5
    # the comparison covers the normalization clamp and the action clip, not just the linear middle
    normalized = policy.normalize(torch.from_numpy(data.obs.reshape(-1, sim.OBS_SIZE)))
    assert (normalized.abs() == 10.0).any()
    assert (np.abs(data.actions) == 1.0).mean() > 0.01 and (np.abs(data.actions) < 1.0).mean() > 0.2


def test_onnx_batch_axis_is_dynamic_and_single_observations_work(models):
    pt, path, _ = models["mlp"]
    policy, data, _ = fresh_rollout(pt, samples=256)
    loaded = load_policy(path)
    obs = data.obs.reshape(-1, sim.OBS_SIZE)
    reference = policy(torch.from_numpy(obs))[0].detach().numpy()
    for n in (1, 7, 256):
        assert loaded.run(obs[:n])[0].shape == (n, 4)
        assert np.abs(loaded.run(obs[:n])[0] - reference[:n]).max() <= 1e-5
    action, state = loaded.run(obs[3])
    assert action.shape == (4,) and state is None
    assert np.abs(action - reference[3]).max() <= 1e-5


def test_recurrent_onnx_carries_its_state_like_torch_over_20_steps(models):
    pt, path, _ = models["gru"]
    policy, data, _ = fresh_rollout(pt, samples=64 * 20)
    loaded = load_policy(path)
    sequence = data.obs[:20, 0]  # one drone's 20 consecutive observations
    h_torch, h_onnx, onnx_actions, torch_actions = None, None, [], []
    for obs in sequence:
        a_t, h_torch = policy(torch.from_numpy(obs[None]), h_torch)
        a_o, h_onnx = loaded.run(obs, h_onnx)
        torch_actions.append(a_t[0].detach().numpy())
        onnx_actions.append(a_o)
        assert np.abs(h_onnx - h_torch.detach().numpy()).max() <= 1e-5
    assert np.abs(np.array(onnx_actions) - np.array(torch_actions)).max() <= 1e-5
    # the state matters: restarting it every step gives other actions, so the check above can fail
    stateless = np.array([loaded.run(obs)[0] for obs in sequence])
    assert np.abs(stateless - np.array(torch_actions)).max() > 1e-3


@pytest.mark.parametrize("kind", ["mlp", "gru"])
def test_c_export_compiles_and_matches_onnxruntime(models, kind, tmp_path):
    pt, path, header = models[kind]
    _, data, state_size = fresh_rollout(pt, seed=11)
    compiled = compile_header(header, str(tmp_path))
    c_actions = replay(compiled.step, data, state_size)
    onnx_actions = replay(onnx_step(load_policy(path).session), data, state_size)
    assert np.abs(c_actions - onnx_actions).max() <= 1e-5
    text = open(header).read()
    assert "#include <math.h>" in text and text.count("#include") == 1  # dependency-free
    assert f"#define SKYLOOP_POLICY_OBS_SIZE {sim.OBS_SIZE}" in text
    macros = {name: kind_.in_dll(compiled.lib, name).value for name, kind_ in
              [("obs_size", ctypes.c_int), ("obs_layout_version", ctypes.c_int), ("action_size", ctypes.c_int),
               ("state_size", ctypes.c_int), ("control_hz", ctypes.c_float), ("action_mode", ctypes.c_char_p)]}
    assert macros == {"obs_size": sim.OBS_SIZE, "obs_layout_version": sim.OBS_LAYOUT_VERSION, "action_size": 4,
                      "state_size": HIDDEN if kind == "gru" else 0, "control_hz": 100.0, "action_mode": b"ctbr"}


def test_metadata_round_trips_the_contract(models):
    pt, path, _ = models["gru"]
    _, ckpt = load_checkpoint(pt)
    meta = load_policy(path).metadata
    assert meta["obs_layout_version"] == sim.OBS_LAYOUT_VERSION and meta["obs_size"] == sim.OBS_SIZE
    assert meta["obs_fields"] == [[n, o, c] for n, o, c in sim.OBS_FIELDS]
    assert meta["action_mode"] == "ctbr" and meta["action_size"] == sim.ACTION_SIZE
    assert meta["action_scaling"]["rate_max_rad_s"] == ckpt["profile"]["params"]["rate_max_rad_s"]
    assert meta["control_hz"] == ckpt["control_hz"] == 100.0
    assert meta["tasks"] == ckpt["tasks"] and meta["task"] == ckpt["task"]
    assert meta["profile"] == ckpt["profile"] and meta["profile"]["randomization"]["mass_frac"] > 0
    assert meta["sim_git_revision"] == ckpt["sim_git_revision"]
    assert meta["training_steps"] == 123_456
    assert meta["eval_success_rate"] == 0.97 and meta["training_success_rate"] == 0.42
    assert meta["recurrent"] is True and meta["state_size"] == HIDDEN
    assert meta["parity_samples"] >= 1000 and meta["parity_max_abs_error"] <= 1e-5


def test_inspect_prints_the_contract_as_a_table_and_as_json(models, capsys):
    _, path, _ = models["mlp"]
    parser = argparse.ArgumentParser()
    export_cli.add_arguments(parser)
    assert export_cli.run(parser.parse_args(["--inspect", path])) == 0
    table = capsys.readouterr().out
    for text in ("obs layout version", "target_body[0:3]", "control rate (Hz)", "size_family", "eval success",
                 "97.0 %", "123,456", "fits the installed sim"):
        assert text in table, text
    assert export_cli.run(parser.parse_args(["--inspect", path, "--json"])) == 0
    assert json.loads(capsys.readouterr().out)["action_mode"] == "ctbr"


def rewrite(src, dst, edit, resign=True):
    """Copies an exported model with its metadata changed by edit(dict of key -> text)."""
    model = onnx.load(src)
    props = {p.key: p.value for p in model.metadata_props}
    edit(props)
    if resign:
        props = encode_metadata(decode_metadata(props))
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, dst)
    return dst


def test_tampered_or_mismatched_models_are_refused_with_the_fix(models, tmp_path):
    _, path, _ = models["mlp"]
    bad = str(tmp_path / "bad.onnx")

    def refused(edit, resign=True, **kw):
        with pytest.raises(PolicyContractError) as err:
            load_policy(rewrite(path, bad, edit, resign), **kw)
        return str(err.value)

    assert load_policy(rewrite(path, bad, lambda p: None)).action_mode == "ctbr"  # re-signing alone is fine
    msg = refused(lambda p: p.update(control_hz="50.0"), resign=False)
    assert "edited after export" in msg and "skyloop export" in msg
    msg = refused(lambda p: p.update(obs_layout_version=str(sim.OBS_LAYOUT_VERSION + 1)))
    assert f"layout v{sim.OBS_LAYOUT_VERSION + 1}" in msg and "retrain" in msg and "re-export" in msg
    msg = refused(lambda p: p.update(obs_size=str(sim.OBS_SIZE - 1)))
    assert f"({sim.OBS_SIZE - 1} values)" in msg and f"({sim.OBS_SIZE} values)" in msg and "retrain" in msg
    msg = refused(lambda p: p.update(obs_fields=p["obs_fields"].replace("hover_action", "hover_thrust")))
    assert "hover_thrust" in msg and "retrain" in msg
    msg = refused(lambda p: p.pop("action_mode"))
    assert "metadata missing ['action_mode']" in msg and "skyloop export" in msg
    msg = refused(lambda p: p.update(recurrent="true", state_size="8"))
    assert "the graph has inputs" in msg
    msg = refused(lambda p: None, action_modes=("motor",))
    assert "a 'ctbr' policy, but this link can fly only motor" in msg
    msg = refused(lambda p: p.clear(), resign=False)
    assert "metadata missing" in msg and "not written by `skyloop export`" in msg
    assert contract_digest({"a": "1"}) != contract_digest({"a": "2"})


def test_unreadable_files_are_refused_clearly(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(PolicyContractError, match="not a readable ONNX model"):
        load_policy(str(junk))
    with pytest.raises(PolicyContractError, match="no such policy file"):
        load_policy(str(tmp_path / "missing.onnx"))
    with pytest.raises(CheckpointError, match="no such policy file"):
        export_onnx(str(tmp_path / "missing.pt"), str(tmp_path / "x.onnx"))


def test_a_parity_mismatch_fails_the_export_and_shows_the_worst_case(tmp_path, monkeypatch):
    import policy_export.export as export_module

    pt = make_checkpoint(tmp_path / "p.pt")
    original = export_module.onnx_graph

    def slightly_wrong_graph(policy):  # what an exporter bug would produce
        wrong = copy.deepcopy(policy)
        with torch.no_grad():
            wrong.mean.bias[2] += 1e-3
        return original(wrong)

    monkeypatch.setattr(export_module, "onnx_graph", slightly_wrong_graph)
    with pytest.raises(ParityError) as err:
        export_onnx(pt, str(tmp_path / "p.onnx"), samples=256)
    assert "max |diff|" in str(err.value) and "action[2]" in str(err.value) and "observation [" in str(err.value)
    assert not (tmp_path / "p.onnx").exists() and not (tmp_path / "p.onnx.tmp").exists()


def test_motor_mode_policy_exports_and_is_refused_by_a_ctbr_only_link(tmp_path):
    pt = make_checkpoint(tmp_path / "m.pt", action_mode="motor")
    export_onnx(pt, str(tmp_path / "m.onnx"), samples=256)
    assert load_policy(str(tmp_path / "m.onnx"), action_modes=("motor", "ctbr")).metadata["action_scaling"][
        "omega_max_rad_s"] > 0
    with pytest.raises(PolicyContractError, match="this link can fly only ctbr"):
        load_policy(str(tmp_path / "m.onnx"), action_modes="ctbr")


def test_bench_policy_reports_latency_figures(models, capsys):
    _, path, header = models["mlp"]
    result = bench.bench_policy(path, header, seconds=0.3, c_iterations=2000)
    assert 0 < result["onnx_p50_us"] <= result["onnx_p99_us"]
    assert 0 < result["c_p50_us"] <= result["c_p99_us"]
    assert result["onnx_p50_us"] < 100 and result["c_p50_us"] < 10  # goals (p99 in the README, from a quiet run)
    args = argparse.Namespace(policy=path, c_header=header, seconds=0.2, json=True)
    assert bench.run(args) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"onnx_p50_us", "onnx_p99_us", "c_p50_us", "c_p99_us"}


def test_cli_errors_are_one_line_with_the_fix(tmp_path, monkeypatch, capsys):
    from skyloop import cli

    monkeypatch.setitem(cli.VERBS, "export", ("policy_export.cli", "export"))
    assert cli.main(["export", str(tmp_path / "none.pt")]) == 1
    err = capsys.readouterr().err
    assert "skyloop export: error:" in err and "skyloop train" in err and "Traceback" not in err
