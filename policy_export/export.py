"""`skyloop export POLICY.pt -o POLICY.onnx`: a trained checkpoint to an ONNX that carries its contract.

The graph is the policy's own `forward` (observation normalization, MLP / GRU, hover prior,
clip to [-1, 1]), so it maps raw observations, as the C observation function builds them, to
actions. Before anything is written, the export flies the PyTorch policy in the sim (its own
profile, randomization, task and action mode) and replays those observations through
onnxruntime: the two must agree to 1e-5, or the export fails and shows the worst case.
"""
from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import warnings
from dataclasses import dataclass

import numpy as np

from policy_export.contract import (ACTION_OUTPUT, FORMAT, OBS_INPUT, STATE_INPUT, STATE_OUTPUT, _session,
                                    check_contract, encode_metadata, load_policy)

log = logging.getLogger(__name__)

TOLERANCE = 1e-5
OPSET = 17


class ExportError(ValueError):
    """A checkpoint that cannot be exported; the message says what to do."""


class ParityError(ExportError):
    """The exported model computes other actions than PyTorch; the message shows the worst case."""


# ------------------------------------------------------------------------------------------
# Checkpoint -> contract values
# ------------------------------------------------------------------------------------------
def load(checkpoint: str):
    """(policy, ckpt) from a trainer checkpoint, on the CPU, in eval mode."""
    from sim.train import load_checkpoint

    return load_checkpoint(checkpoint)


def action_scaling(ckpt: dict) -> dict:
    """What an action in [-1, 1] means for the vehicle (see sim/c/physics.h, section 5)."""
    params = ckpt["profile"]["params"]
    if ckpt["action_mode"] == "ctbr":
        return {"range": [-1.0, 1.0],
                "thrust": "a[0]: collective thrust, fraction (a[0] + 1) / 2 of the nominal maximum thrust",
                "body_rates": "a[1..3]: body rates FLU in rad/s = a * rate_max_rad_s",
                "rate_max_rad_s": params["rate_max_rad_s"]}
    return {"range": [-1.0, 1.0],
            "motors": "a[m]: throttle (a + 1) / 2 through the nominal throttle curve; motor order PX4 quad-X "
                      "(1 front-right, 2 back-left, 3 front-left, 4 back-right)",
            "throttle_to_omega_rad_s": params["throttle_to_omega_rad_s"], "omega_max_rad_s": params["omega_max_rad_s"]}


def _success(ckpt: dict) -> tuple:
    """(eval success, training success) where the checkpoint records them, else None."""
    evaluation, stats = ckpt.get("eval"), ckpt.get("training_stats") or {}
    eval_rate = evaluation.get("success_rate") if isinstance(evaluation, dict) else stats.get("eval_success_rate")
    train_rate = stats.get("success_rate")
    return (None if eval_rate is None else float(eval_rate)), (None if train_rate is None else float(train_rate))


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def contract_values(policy, ckpt: dict, checkpoint: str) -> dict:
    """The metadata of an export of this checkpoint; refuses one that does not fit the installed sim."""
    eval_rate, train_rate = _success(ckpt)
    values = {
        "format": FORMAT,
        "obs_layout_version": int(ckpt["obs_layout_version"]),
        "obs_size": int(ckpt["obs_size"]),
        "obs_fields": [list(f) for f in ckpt["obs_fields"]],
        "action_size": int(ckpt["action_size"]),
        "action_mode": ckpt["action_mode"],
        "action_scaling": action_scaling(ckpt),
        "control_hz": float(ckpt["control_hz"]),
        "recurrent": bool(policy.recurrent),
        "state_size": int(policy.hidden) if policy.recurrent else 0,
        "tasks": list(ckpt.get("tasks") or []),
        "task": ckpt.get("task"),
        "profile": ckpt["profile"],
        "sim_git_revision": str(ckpt.get("sim_git_revision", "unknown")),
        "training_steps": int(ckpt.get("training_steps", 0)),
        "eval_success_rate": eval_rate,
        "training_success_rate": train_rate,
        "checkpoint_sha256": file_sha256(checkpoint),
    }
    check_contract(values, checkpoint, (values["action_mode"],))
    return values


# ------------------------------------------------------------------------------------------
# Parity: observations from sim rollouts, replayed through another implementation
# ------------------------------------------------------------------------------------------
@dataclass
class Rollout:
    obs: np.ndarray      # [T, N, OBS_SIZE], what the drones observed
    resets: np.ndarray   # [T, N] bool, an episode started at this step (the recurrent state is zeroed)
    actions: np.ndarray  # [T, N, ACTION_SIZE], what the reference policy answered


def torch_step(policy):
    """step(obs [n, OBS], state [n, H] or None) -> (action, state), numpy in and out."""
    import torch

    def step(obs, state):
        with torch.no_grad():
            action, state = policy(torch.from_numpy(obs), None if state is None else torch.from_numpy(state))
        return action.numpy(), None if state is None else state.numpy()
    return step


def onnx_step(session):
    """The same for an onnxruntime session of an exported policy."""
    recurrent = any(i.name == STATE_INPUT for i in session.get_inputs())

    def step(obs, state):
        if not recurrent:
            return session.run([ACTION_OUTPUT], {OBS_INPUT: obs})[0], None
        return tuple(session.run([ACTION_OUTPUT, STATE_OUTPUT], {OBS_INPUT: obs, STATE_INPUT: state}))
    return step


def rollout(step, ckpt: dict, state_size: int, samples: int = 4096, seed: int = 0, drones: int = 64) -> Rollout:
    """Flies `step` in the sim the checkpoint was trained on and records about `samples` observations."""
    from sim.env import DroneEnv
    from sim.profiles import parse_profile

    profile = parse_profile(ckpt["profile"], "the checkpoint's profile")
    env = DroneEnv(drones, profile, action_mode=ckpt["action_mode"], task=ckpt.get("task"), seed=seed)
    obs, _ = env.reset(seed=seed)
    state = np.zeros((drones, state_size), np.float32) if state_size else None
    reset = np.ones(drones, bool)
    record = Rollout([], [], [])
    for _ in range(math.ceil(samples / drones)):
        obs = obs.copy()
        if state is not None:
            state = np.where(reset[:, None], 0.0, state).astype(np.float32)
        action, state = step(obs, state)
        record.obs.append(obs)
        record.resets.append(reset)
        record.actions.append(np.array(action))
        obs, _, terminated, truncated, _ = env.step(np.asarray(action, np.float32))
        reset = terminated | truncated
    return Rollout(np.stack(record.obs), np.stack(record.resets), np.stack(record.actions))


def replay(step, data: Rollout, state_size: int) -> np.ndarray:
    """The actions `step` gives for the recorded observations, carrying its own state."""
    state = np.zeros(data.obs.shape[1:2] + (state_size,), np.float32) if state_size else None
    actions = []
    for obs, reset in zip(data.obs, data.resets):
        if state is not None:
            state = np.where(reset[:, None], 0.0, state).astype(np.float32)
        action, state = step(obs, state)
        actions.append(np.array(action))
    return np.stack(actions)


def check_parity(name: str, actions: np.ndarray, data: Rollout, tolerance: float = TOLERANCE) -> float:
    """Max |actions - reference| over the rollout; ParityError with the worst case above `tolerance`."""
    diff = np.abs(np.asarray(actions, np.float64) - data.actions)
    diff[np.isnan(diff)] = np.inf  # a NaN on one side only is the worst case of all
    worst = np.unravel_index(np.argmax(diff), diff.shape)
    max_diff = float(diff[worst])
    if not max_diff <= tolerance:
        t, i, k = (int(v) for v in worst)
        raise ParityError(
            f"{name} and PyTorch disagree on sim observations: max |diff| {max_diff:.3g} > {tolerance:g} at step {t} "
            f"of drone {i}, action[{k}]: PyTorch {data.actions[t, i, k]:.7f}, {name} {actions[t, i, k]:.7f}; "
            f"observation {np.array2string(data.obs[t, i], precision=4, max_line_width=200)}. Nothing was written: "
            f"this is an exporter bug (an operation computed differently); report it with the checkpoint")
    return max_diff


# ------------------------------------------------------------------------------------------
# ONNX
# ------------------------------------------------------------------------------------------
def onnx_graph(policy) -> bytes:
    """The policy's forward as ONNX: obs [batch, OBS] (+ state [batch, H]) -> action [batch, 4] (+ state_out)."""
    import torch

    class Exported(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.policy = policy

        def forward(self, obs, state=None):
            action, next_state = self.policy(obs, state)
            return action if next_state is None else (action, next_state)

    obs = torch.zeros(1, policy.obs_mean.shape[0])
    args, inputs, outputs = (obs,), [OBS_INPUT], [ACTION_OUTPUT]
    if policy.recurrent:
        args, inputs, outputs = (obs, torch.zeros(1, policy.hidden)), inputs + [STATE_INPUT], outputs + [STATE_OUTPUT]
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated, but needs no extra package
        warnings.simplefilter("ignore")
        torch.onnx.export(Exported().eval(), args, buffer, input_names=inputs, output_names=outputs,
                          dynamic_axes={name: {0: "batch"} for name in inputs + outputs},
                          opset_version=OPSET, dynamo=False)
    return buffer.getvalue()


def with_metadata(graph: bytes, values: dict) -> bytes:
    import onnx

    model = onnx.load_from_string(graph)
    del model.metadata_props[:]
    for key, text in encode_metadata(values).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, text
    model.producer_name = "skyloop export"
    model.doc_string = "Skyloop policy: raw observations -> actions in [-1, 1]; the contract is in the metadata."
    onnx.checker.check_model(model)
    return model.SerializeToString()


def export_onnx(checkpoint: str, output: str, samples: int = 4096, seed: int = 0,
                tolerance: float = TOLERANCE) -> dict:
    """Exports, checks parity on sim rollouts, writes `output` and reloads it as the runner will.
    Returns the contract values (with the parity figures)."""
    policy, ckpt = load(checkpoint)
    values = contract_values(policy, ckpt, checkpoint)
    log.info("exporting %s (%s %s, hidden %d)", checkpoint, values["action_mode"],
             "GRU" if policy.recurrent else "MLP", policy.hidden)
    graph = onnx_graph(policy)
    log.info("parity check: flying the policy in the sim for %d observations", samples)
    data = rollout(torch_step(policy), ckpt, values["state_size"], samples, seed)
    actions = replay(onnx_step(_session(graph)), data, values["state_size"])
    values["parity_samples"] = int(data.obs.shape[0] * data.obs.shape[1])
    values["parity_max_abs_error"] = check_parity("onnxruntime", actions, data, tolerance)
    log.info("parity: onnxruntime matches PyTorch on %d observations, max |diff| %.2g",
             values["parity_samples"], values["parity_max_abs_error"])
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    tmp = output + ".tmp"
    with open(tmp, "wb") as f:
        f.write(with_metadata(graph, values))
    try:
        load_policy(tmp, action_modes=(values["action_mode"],))
    except Exception:
        os.remove(tmp)
        raise
    os.replace(tmp, output)
    return values
