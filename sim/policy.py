"""The policy network and its checkpoint file, shared by the trainer, the evaluator and the exporter.

A checkpoint is data, not code: tensors and plain Python values (dicts, lists, strings, numbers,
booleans, None), written with `torch.save` and read with `torch.load(weights_only=True)`, which
refuses anything else. Loading a file never runs code that is hidden in it.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import subprocess

import numpy as np
import torch
from torch import nn

from sim.core import ACTION_SIZE, OBS_FIELDS, OBS_LAYOUT_VERSION, OBS_SIZE, TASKS, obs_slice

CHECKPOINT_FORMAT = "skyloop.policy/1"


# --------------------------------------------------------------------------------------------
# The policy: observation normalization -> MLP (optionally a GRU) -> action mean, plus a hover
# prior (the drone's nominal hover action, an observation, added to the thrust channels, so an
# untrained policy hovers instead of shooting up or dropping), squashed to [-1, 1] by a clip;
# a state-independent log-std for exploration; a value head.
# --------------------------------------------------------------------------------------------
def _mlp(sizes):
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers)


class Policy(nn.Module):
    def __init__(self, obs_size: int = OBS_SIZE, action_size: int = ACTION_SIZE, hidden: int = 64, layers: int = 2,
                 recurrent: bool = False, init_log_std: float = -1.0, action_mode: str = "ctbr"):
        super().__init__()
        self.recurrent = recurrent
        self.hidden = hidden
        self.action_mode = action_mode
        thrust_channels = [1.0, 0.0, 0.0, 0.0] if action_mode == "ctbr" else [1.0] * action_size
        self.register_buffer("hover_prior", torch.tensor(thrust_channels))
        self.hover_index = obs_slice("hover_action").start
        self.register_buffer("obs_mean", torch.zeros(obs_size))
        self.register_buffer("obs_var", torch.ones(obs_size))
        self.register_buffer("obs_count", torch.tensor(1e-4, dtype=torch.float64))
        self.actor_body = _mlp([obs_size] + [hidden] * layers)
        self.critic = nn.Sequential(_mlp([obs_size] + [hidden] * layers), nn.Linear(hidden, 1))
        self.gru = nn.GRUCell(hidden, hidden) if recurrent else None
        self.mean = nn.Linear(hidden, action_size)
        nn.init.orthogonal_(self.mean.weight, 0.01)
        nn.init.zeros_(self.mean.bias)
        self.log_std = nn.Parameter(torch.full((action_size,), float(init_log_std)))

    def obs_std(self) -> torch.Tensor:
        return torch.sqrt(self.obs_var + 1e-8)

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.clamp((obs - self.obs_mean) / self.obs_std(), -10.0, 10.0)

    @torch.no_grad()
    def update_normalization(self, obs: torch.Tensor) -> None:
        """Running mean / variance (parallel Welford) over every observation seen in training."""
        batch_mean, batch_var, n = obs.mean(0), obs.var(0, unbiased=False), obs.shape[0]
        total = self.obs_count + n
        delta = batch_mean - self.obs_mean
        self.obs_mean += (delta * n / total).float()
        m2 = self.obs_var * self.obs_count + batch_var * n + delta.pow(2) * self.obs_count * n / total
        self.obs_var.copy_((m2 / total).float())
        self.obs_count.copy_(total)

    def features(self, obs: torch.Tensor, state: torch.Tensor | None = None):
        x = self.actor_body(self.normalize(obs))
        if self.recurrent:
            state = self.gru(x, state)
            x = state
        return x, state

    def action_mean(self, obs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.mean(x) + obs[:, self.hover_index:self.hover_index + 1] * self.hover_prior

    def forward(self, obs: torch.Tensor, state: torch.Tensor | None = None):
        """Deterministic action in [-1, 1] (what is exported and flown), and the recurrent state."""
        x, state = self.features(obs, state)
        return torch.clamp(self.action_mean(obs, x), -1.0, 1.0), state

    def initial_state(self, n: int, device=None) -> torch.Tensor | None:
        return torch.zeros(n, self.hidden, device=device) if self.recurrent else None


def git_revision() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "sim"], cwd=here, capture_output=True,
                               text=True, timeout=5).stdout.strip()
        return (rev + ("-dirty" if dirty else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"



# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------
class CheckpointError(ValueError):
    """A checkpoint that cannot be used with this sim (or is not a checkpoint); says what to do."""


def plain(value, where: str = "checkpoint"):
    """`value` as plain Python data (dict / list / str / int / float / bool / None): numpy scalars
    and arrays become numbers and lists, tuples lists; anything else is refused (it would need
    pickle to load)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        return plain(value.tolist(), where)
    if isinstance(value, dict):
        return {str(k): plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise CheckpointError(f"{where}: {type(value).__name__} is not plain data; store numbers, strings, lists or dicts")


def save_checkpoint(path: str, policy: Policy, config, env, steps: int, stats: dict,
                    evaluation: dict | None = None) -> None:
    """Writes the policy's weights and everything needed to use it (`config`: the training config,
    a dataclass or a dict; `env`: the sim.env.DroneEnv trained on) as plain data."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    config = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    meta = plain({
        "format": CHECKPOINT_FORMAT,
        "architecture": {"hidden": policy.hidden, "layers": len(policy.actor_body) // 2, "recurrent": policy.recurrent},
        "config": config,
        "profile": env.profile.to_json(),
        "task": env.task,
        "tasks": [name for name, p in zip(TASKS, env.task["task_prob"]) if p > 0],
        "action_mode": env.action_mode,
        "control_hz": env.control_hz,
        "obs_layout_version": OBS_LAYOUT_VERSION,
        "obs_size": OBS_SIZE,
        "obs_fields": [[name, offset, count] for name, offset, count in OBS_FIELDS],
        "action_size": ACTION_SIZE,
        "sim_git_revision": git_revision(),
        "training_steps": steps,
        "training_stats": stats,
        "eval": evaluation,          # sim.evaluate's summary of the final policy, when it was run
    })
    meta["state_dict"] = {k: v.detach().cpu().clone() for k, v in policy.state_dict().items()}
    tmp = path + ".tmp"
    torch.save(meta, tmp)
    os.replace(tmp, path)


REQUIRED = {"state_dict": dict, "architecture": dict, "profile": dict, "task": dict, "action_mode": str,
            "obs_layout_version": int, "obs_size": int, "action_size": int}


def read_checkpoint(path: str, device: str = "cpu") -> dict:
    """The checkpoint's contents (weights and metadata), read as data only."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such policy file (train one with `skyloop train -o {path}`)")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        what = next((line.split("error:", 1)[-1].strip() for line in str(exc).splitlines()
                     if "Unsupported global" in line or "Unsupported class" in line), None)
        what = what and what.split(". Please")[0]
        if what is None:   # not a pickle of anything: a corrupt or foreign file
            raise CheckpointError(f"{path}: not a readable policy checkpoint ({exc.__class__.__name__}: "
                                  f"{str(exc).strip().splitlines()[-3][:200]})") from None
        raise CheckpointError(
            f"{path}: refused: the file holds Python objects other than tensors and plain data, and loading "
            f"them could run code hidden in it ({what[:160]}). Skyloop checkpoints are data only: retrain it, "
            f"or re-save the policy with sim.policy.save_checkpoint from code you trust.") from None
    except Exception as exc:  # torch raises many kinds for a corrupt file
        raise CheckpointError(f"{path}: not a readable policy checkpoint ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a Skyloop policy checkpoint (format {CHECKPOINT_FORMAT!r})")
    wrong = [f"{k} ({t.__name__})" for k, t in REQUIRED.items() if not isinstance(ckpt.get(k), t)]
    if wrong:
        raise CheckpointError(f"{path}: a Skyloop checkpoint, but these fields are missing or of the wrong type: "
                              f"{', '.join(wrong)}; retrain it with `skyloop train`")
    return ckpt


def load_checkpoint(path: str, device: str = "cpu") -> tuple[Policy, dict]:
    """(policy in eval mode on `device`, the checkpoint's contents); refuses a file that is not a
    Skyloop checkpoint of this sim's observation layout, or that is not plain data."""
    ckpt = read_checkpoint(path, device)
    if ckpt["obs_layout_version"] != OBS_LAYOUT_VERSION or ckpt["obs_size"] != OBS_SIZE:
        raise CheckpointError(f"{path}: trained for observation layout v{ckpt['obs_layout_version']} "
                              f"({ckpt['obs_size']} values); this sim has v{OBS_LAYOUT_VERSION} ({OBS_SIZE}): retrain it")
    arch = ckpt["architecture"]
    policy = Policy(ckpt["obs_size"], ckpt["action_size"], arch["hidden"], arch["layers"], arch["recurrent"],
                    action_mode=ckpt["action_mode"])
    try:
        policy.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the architecture {arch}: {str(exc)[:300]}") from None
    policy.to(device).eval()
    return policy, ckpt
