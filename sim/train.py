"""PPO for the vectorized C drone env, in one file (in the spirit of CleanRL's single-file PPO).

    skyloop train --time-budget 60 -o policy.pt
    skyloop train --train.lr 1e-3 --train.num_drones 2048 --train.action_mode motor

The config is one dataclass; every field can be set from the command line as --train.FIELD VALUE
(`skyloop train --help` lists them). The checkpoint holds the weights with the observation
normalization and action squashing baked into the module (what the exporter needs), the config,
the drone profile and randomization trained on, the task, the observation layout and the sim's
git revision.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from sim.core import ACTION_SIZE, OBS_FIELDS, OBS_LAYOUT_VERSION, OBS_SIZE, TASKS, SimError, obs_slice
from sim.env import DroneEnv, parse_tasks, task_config
from sim.evaluate import evaluate

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = "skyloop.policy/1"


@dataclass
class TrainConfig:
    seed: int = 0
    device: str = "auto"                  # auto: cuda when present, else cpu
    threads: int = 0                      # torch CPU threads; 0 = all cores
    profile: str = "size_family"          # drone profile (built-in name or JSON path), with its randomization
    action_mode: str = "ctbr"             # ctbr (collective thrust + body rates) or motor
    tasks: str = "hover"                  # task mix: "hover", "hover:3,race:1", "all" (names: sim.core.TASKS)
    num_drones: int = 512
    time_budget_s: float = 60.0           # stop after this much wall time ...
    total_steps: int = 200_000_000        # ... or this many agent steps, whichever comes first
    horizon: int = 64                     # steps per drone per rollout
    epochs: int = 3
    minibatches: int = 8
    lr: float = 3e-3
    lr_final_frac: float = 0.1            # learning rate decays linearly to lr * this over the budget
    gamma: float = 0.98
    gae_lambda: float = 0.95
    clip: float = 0.2
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    max_grad_norm: float = 1.0
    init_log_std: float = -1.0
    hidden: int = 64
    layers: int = 2
    recurrent: bool = False               # a GRU before the heads (state carried between steps)
    output: str = "policy.pt"
    log_jsonl: str = ""                   # JSON-lines log of every metric; default: OUTPUT with .jsonl
    eval_episodes: int = 1000             # after training: fresh randomized drones, deterministic actions (0: skip)
    snapshot_every_s: float = 0.0         # also save OUTPUT-stem.at<seconds>s.pt this often (0: never)
    task: dict = field(default_factory=dict)  # overrides of sim.env.DEFAULT_TASK

    def validate(self) -> None:
        problems = []
        if self.num_drones < 1:
            problems.append("num_drones must be at least 1")
        if self.horizon < 2:
            problems.append("horizon must be at least 2")
        if self.minibatches < 1 or self.epochs < 1:
            problems.append("epochs and minibatches must be at least 1")
        if self.num_drones % self.minibatches:
            problems.append(f"num_drones ({self.num_drones}) must be divisible by minibatches ({self.minibatches})")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            problems.append(f"lr must be a positive number, got {self.lr}")
        if not 0 < self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            problems.append("gamma must be in (0, 1] and gae_lambda in [0, 1]")
        if self.eval_episodes < 0:
            problems.append("eval_episodes must be 0 (skip) or positive")
        if self.snapshot_every_s < 0:
            problems.append("snapshot_every_s must be 0 (off) or positive")
        if self.time_budget_s <= 0 or self.total_steps <= 0:
            problems.append("time_budget_s and total_steps must be positive")
        if self.action_mode not in ("ctbr", "motor"):
            problems.append(f"action_mode must be ctbr or motor, got {self.action_mode!r}")
        try:
            parse_tasks(self.tasks)
        except SimError as exc:
            problems.append(str(exc))
        if self.hidden < 1 or self.layers < 1:
            problems.append("hidden and layers must be at least 1")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            problems.append(f"device must be auto, cpu or cuda, got {self.device!r}")
        if problems:
            raise ConfigError("bad training config: " + "; ".join(problems))


class ConfigError(ValueError):
    """A training config value that cannot work; the message names it."""


def parse_overrides(args: list[str], config: TrainConfig | None = None) -> TrainConfig:
    """Applies `--train.FIELD VALUE` pairs (and `--task.FIELD VALUE` for the task) to a config."""
    config = dataclasses.replace(config or TrainConfig())
    types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    it = iter(args)
    for flag in it:
        try:
            value = next(it)
        except StopIteration:
            raise ConfigError(f"{flag} needs a value") from None
        if flag.startswith("--task."):
            config.task = {**config.task, flag[len("--task."):]: json.loads(value)}
            continue
        if not flag.startswith("--train."):
            raise ConfigError(f"unknown option {flag!r}: use --train.FIELD VALUE (fields: {', '.join(types)})")
        name = flag[len("--train."):]
        if name not in types or name == "task":
            raise ConfigError(f"unknown config field {name!r}; fields: {', '.join(n for n in types if n != 'task')}")
        kind = types[name]
        try:
            if kind in ("bool", bool):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                parsed = value.lower() in ("true", "1", "yes")
            elif kind in ("int", int):
                parsed = int(float(value)) if float(value).is_integer() else int(value)
            elif kind in ("float", float):
                parsed = float(value)
            else:
                parsed = value
        except ValueError:
            raise ConfigError(f"--train.{name}: {value!r} is not a valid {kind}") from None
        setattr(config, name, parsed)
    return config


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


def _distribution(policy: Policy, obs: torch.Tensor, x: torch.Tensor):
    return torch.distributions.Normal(policy.action_mean(obs, x), policy.log_std.exp().expand(x.shape[0], -1))


def _value(policy: Policy, obs: torch.Tensor) -> torch.Tensor:
    return policy.critic(policy.normalize(obs)).squeeze(-1)


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


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but torch sees no CUDA GPU: use --train.device cpu")
    return torch.device(name)


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------
def save_checkpoint(path: str, policy: Policy, config: TrainConfig, env: DroneEnv, steps: int, stats: dict,
                    evaluation: dict | None = None) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in policy.state_dict().items()},
        "architecture": {"hidden": policy.hidden, "layers": config.layers, "recurrent": policy.recurrent},
        "config": dataclasses.asdict(config),
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
    }
    tmp = path + ".tmp"
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def snapshot_path(output: str, elapsed_s: float) -> str:
    return f"{os.path.splitext(output)[0]}.at{elapsed_s:05.1f}s.pt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used with this sim; says what to do."""


def load_checkpoint(path: str, device: str = "cpu") -> tuple[Policy, dict]:
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such policy file (train one with `skyloop train -o {path}`)")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # torch raises many kinds for a corrupt file
        raise CheckpointError(f"{path}: not a readable policy checkpoint ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a Skyloop policy checkpoint (format {CHECKPOINT_FORMAT!r})")
    if ckpt["obs_layout_version"] != OBS_LAYOUT_VERSION or ckpt["obs_size"] != OBS_SIZE:
        raise CheckpointError(f"{path}: trained for observation layout v{ckpt['obs_layout_version']} "
                              f"({ckpt['obs_size']} values); this sim has v{OBS_LAYOUT_VERSION} ({OBS_SIZE}): retrain it")
    arch = ckpt["architecture"]
    policy = Policy(ckpt["obs_size"], ckpt["action_size"], arch["hidden"], arch["layers"], arch["recurrent"],
                    action_mode=ckpt["action_mode"])
    policy.load_state_dict(ckpt["state_dict"])
    policy.to(device).eval()
    return policy, ckpt


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
def per_task_success(recent: dict) -> dict:
    """Success rate of the recent training episodes, per task that had any."""
    task, success = np.asarray(recent["task"], int), np.asarray(recent["success"], float)
    return {name: float(success[task == k].mean()) for k, name in enumerate(TASKS) if (task == k).any()}


class Progress:
    """One live status line (steps/s, return, success, time left) and a JSON-lines log."""

    def __init__(self, config: TrainConfig, log_path: str, stream=sys.stderr):
        self.config, self.stream = config, stream
        self.log = open(log_path, "w", encoding="utf-8") if log_path else None
        self.tty = stream.isatty()
        self.last_print = 0.0

    def update(self, metrics: dict, final: bool = False) -> None:
        if self.log:
            self.log.write(json.dumps(metrics) + "\n")
            self.log.flush()
        now = time.monotonic()
        if not final and now - self.last_print < (0.5 if self.tty else 5.0):
            return
        self.last_print = now
        line = (f"{metrics['steps'] / 1e6:7.2f} M steps  {metrics['steps_per_s'] / 1e3:6.0f} k steps/s  "
                f"return {metrics['episode_return']:7.2f}  success {100 * metrics['success_rate']:5.1f} %  "
                f"crash {100 * metrics['crash_rate']:5.1f} %  {metrics['time_left_s']:4.0f} s left")
        if len(metrics["success_per_task"]) > 1:
            line += "  (" + " ".join(f"{k} {100 * v:.0f}%" for k, v in metrics["success_per_task"].items()) + ")"
        self.stream.write(("\r" + line) if self.tty else (line + "\n"))
        if final and self.tty:
            self.stream.write("\n")
        self.stream.flush()

    def close(self):
        if self.log:
            self.log.close()


def train(config: TrainConfig, progress_stream=sys.stderr) -> dict:
    """Trains a policy and writes the checkpoint; returns the final metrics."""
    config.validate()
    device = pick_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    env = DroneEnv(config.num_drones, config.profile, action_mode=config.action_mode,
                   task=task_config(**{"task_prob": parse_tasks(config.tasks), **config.task}), seed=config.seed)
    obs_np, _ = env.reset(seed=config.seed)
    N, T = config.num_drones, config.horizon
    policy = Policy(OBS_SIZE, ACTION_SIZE, config.hidden, config.layers, config.recurrent, config.init_log_std,
                    config.action_mode).to(device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.lr, eps=1e-5)

    obs_buf = torch.zeros(T, N, OBS_SIZE, device=device)
    act_buf = torch.zeros(T, N, ACTION_SIZE, device=device)
    logp_buf = torch.zeros(T, N, device=device)
    rew_buf = torch.zeros(T, N, device=device)
    done_buf = torch.zeros(T, N, device=device)
    val_buf = torch.zeros(T, N, device=device)
    state = policy.initial_state(N, device)
    state_buf = torch.zeros(T, N, config.hidden, device=device) if config.recurrent else None

    log_path = config.log_jsonl or os.path.splitext(config.output)[0] + ".jsonl"
    progress = Progress(config, log_path, progress_stream)
    start = time.monotonic()
    steps, updates = 0, 0
    next_snapshot_s = config.snapshot_every_s
    timing = {"env_s": 0.0, "rollout_s": 0.0, "update_s": 0.0}   # where the time goes (env_s is inside rollout_s)
    recent = {"success": [], "crash": [], "return": [], "task": []}
    metrics = {}
    obs = torch.as_tensor(obs_np, device=device)
    while True:
        elapsed = time.monotonic() - start
        frac_done = max(elapsed / config.time_budget_s, steps / config.total_steps)
        if frac_done >= 1.0:
            break
        for group in optimizer.param_groups:
            group["lr"] = config.lr * (1.0 - (1.0 - config.lr_final_frac) * frac_done)
        # ---- rollout ----
        t_rollout = time.perf_counter()
        with torch.no_grad():
            for t in range(T):
                policy.update_normalization(obs)
                obs_buf[t] = obs
                if config.recurrent:
                    state_buf[t] = state
                x, state = policy.features(obs, state)
                dist = _distribution(policy, obs, x)
                action = dist.sample()
                logp_buf[t] = dist.log_prob(action).sum(-1)
                act_buf[t] = action
                val_buf[t] = _value(policy, obs)
                env_action = torch.clamp(action, -1.0, 1.0).cpu().numpy()
                t_env = time.perf_counter()
                obs_np, rew_np, term_np, trunc_np, info = env.step(env_action)
                timing["env_s"] += time.perf_counter() - t_env
                reward = torch.as_tensor(rew_np, device=device).clone()
                done = torch.as_tensor(term_np | trunc_np, device=device).float()
                if trunc_np.any():  # a time limit is not a terminal state: bootstrap from the last state
                    idx = np.flatnonzero(trunc_np)
                    final = torch.as_tensor(info["final_obs"][idx], device=device)
                    reward[idx] += config.gamma * _value(policy, final)
                rew_buf[t], done_buf[t] = reward, done
                if "episode" in info:
                    ep = info["episode"]
                    recent["success"].extend(ep["success"].tolist())
                    recent["crash"].extend(ep["crash"].tolist())
                    recent["return"].extend(ep["return"].tolist())
                    recent["task"].extend(ep["task"].tolist())
                    if config.recurrent:
                        state[torch.as_tensor(info["done_index"], device=device)] = 0.0
                obs = torch.as_tensor(obs_np, device=device)
            steps += N * T
            # ---- advantages (GAE) ----
            next_value = _value(policy, obs)
            adv = torch.zeros_like(rew_buf)
            last = torch.zeros(N, device=device)
            for t in reversed(range(T)):
                nv = next_value if t == T - 1 else val_buf[t + 1]
                nonterminal = 1.0 - done_buf[t]
                delta = rew_buf[t] + config.gamma * nv * nonterminal - val_buf[t]
                last = delta + config.gamma * config.gae_lambda * nonterminal * last
                adv[t] = last
            returns = adv + val_buf
        timing["rollout_s"] += time.perf_counter() - t_rollout
        t_update = time.perf_counter()
        # ---- PPO update: minibatches of whole drones (keeps time order for the recurrent policy) ----
        for _epoch in range(config.epochs):
            perm = torch.randperm(N, device=device)
            for mb in perm.chunk(config.minibatches):
                if config.recurrent:
                    h, xs = state_buf[0, mb], []
                    for t in range(T):
                        h = h * (1.0 - done_buf[t - 1, mb]).unsqueeze(-1) if t > 0 else h
                        x, h = policy.features(obs_buf[t, mb], h)
                        xs.append(x)
                    x = torch.stack(xs).reshape(T * len(mb), -1)
                else:
                    x, _ = policy.features(obs_buf[:, mb].reshape(-1, OBS_SIZE))
                dist = _distribution(policy, obs_buf[:, mb].reshape(-1, OBS_SIZE), x)
                logp = dist.log_prob(act_buf[:, mb].reshape(-1, ACTION_SIZE)).sum(-1)
                ratio = (logp - logp_buf[:, mb].reshape(-1)).exp()
                a = adv[:, mb].reshape(-1)
                a = (a - a.mean()) / (a.std() + 1e-8)
                policy_loss = torch.max(-a * ratio, -a * ratio.clamp(1 - config.clip, 1 + config.clip)).mean()
                v = _value(policy, obs_buf[:, mb].reshape(-1, OBS_SIZE))
                value_loss = 0.5 * (v - returns[:, mb].reshape(-1)).pow(2).mean()
                entropy = dist.entropy().sum(-1).mean()
                loss = policy_loss + config.vf_coef * value_loss - config.ent_coef * entropy
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
                optimizer.step()
        updates += 1
        timing["update_s"] += time.perf_counter() - t_update
        elapsed = time.monotonic() - start
        for k in recent:
            recent[k] = recent[k][-4 * N:]
        metrics = {
            "steps": steps, "updates": updates, "elapsed_s": elapsed, "steps_per_s": steps / elapsed,
            "time_left_s": max(0.0, config.time_budget_s - elapsed),
            "episode_return": float(np.mean(recent["return"])) if recent["return"] else 0.0,
            "success_rate": float(np.mean(recent["success"])) if recent["success"] else 0.0,
            "crash_rate": float(np.mean(recent["crash"])) if recent["crash"] else 0.0,
            "policy_loss": policy_loss.item(), "value_loss": value_loss.item(), "entropy": entropy.item(),
            "lr": optimizer.param_groups[0]["lr"], "log_std": policy.log_std.detach().cpu().tolist(),
            **{f"time_{k}": v for k, v in timing.items()},
            "success_per_task": per_task_success(recent),
        }
        progress.update(metrics)
        if config.snapshot_every_s and elapsed >= next_snapshot_s:
            save_checkpoint(snapshot_path(config.output, elapsed), policy, config, env, steps, metrics)
            next_snapshot_s += config.snapshot_every_s
    progress.update(metrics, final=True)
    progress.close()
    policy.eval()
    policy.cpu()
    evaluation = None
    if config.eval_episodes:
        evaluation = evaluate(policy, env.profile, config.action_mode, config.eval_episodes, env.task)
        metrics["eval_success_rate"], metrics["eval_crash_rate"] = evaluation["success_rate"], evaluation["crash_rate"]
    save_checkpoint(config.output, policy, config, env, steps, metrics, evaluation)
    return metrics


def add_arguments(parser) -> None:
    defaults = TrainConfig()
    parser.add_argument("-o", "--output", default=defaults.output, help="checkpoint to write (.pt)")
    parser.add_argument("--time-budget", type=float, default=defaults.time_budget_s, dest="time_budget_s",
                        help="wall-clock seconds to train")
    parser.add_argument("--device", default=defaults.device, help="auto, cpu or cuda")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    fields = "\n".join(f"  --train.{f.name} ({f.type}, default {getattr(defaults, f.name)!r})"
                       for f in dataclasses.fields(TrainConfig) if f.name != "task")
    parser.epilog = ("Every config field can be set as --train.FIELD VALUE, and the task as --task.FIELD VALUE "
                     "(see sim.env.DEFAULT_TASK):\n" + fields)
    parser.formatter_class = __import__("argparse").RawDescriptionHelpFormatter


def run(args, extra: list[str]) -> int:
    config = TrainConfig(output=args.output, time_budget_s=args.time_budget_s, device=args.device, seed=args.seed)
    config = parse_overrides(extra, config)
    print(f"skyloop train: {config.num_drones} drones, {config.action_mode} mode, profile {config.profile}, "
          f"{config.time_budget_s:g} s budget, device {pick_device(config.device)}", file=sys.stderr)
    metrics = train(config)
    line = (f"wrote {config.output}: {metrics.get('steps', 0) / 1e6:.1f} M steps in {metrics.get('elapsed_s', 0):.0f} s; "
            f"training episodes (with exploration noise): success {100 * metrics.get('success_rate', 0):.1f} %, "
            f"crash {100 * metrics.get('crash_rate', 0):.1f} %")
    if "eval_success_rate" in metrics:
        line += (f"\nevaluation on {config.eval_episodes} fresh drones: success {100 * metrics['eval_success_rate']:.1f} %, "
                 f"crash {100 * metrics['eval_crash_rate']:.1f} %  (skyloop eval {config.output} for details)")
    print(line)
    return 0
