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
import hashlib
import io
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from sim.core import ACTION_SIZE, OBS_SIZE, TASKS, SimError, obs_slice
from sim.env import DroneEnv, parse_tasks, task_config
from sim.evaluate import evaluate
from sim.policy import (CHECKPOINT_FORMAT, CheckpointError, Policy, git_revision,  # noqa: F401 (re-exported)
                        load_checkpoint, save_checkpoint)

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    seed: int = 0
    device: str = "auto"                  # auto: cuda when present, else cpu
    threads: int = 0                      # torch CPU threads; 0 = the free cores (cores - load average), at least 1
    profile: str = "size_family"          # drone profile (built-in name or JSON path), with its randomization
    action_mode: str = "ctbr"             # ctbr (collective thrust + body rates) or motor
    tasks: str = "hover"                  # task mix: "hover", "hover:3,race:1", "all" (names: sim.core.TASKS)
    num_drones: int = 512
    time_budget_s: float = 60.0           # stop after this much wall time ...
    total_steps: int = 200_000_000        # ... or this many agent steps, whichever comes first
    horizon: int = 64                     # steps per drone per rollout
    epochs: float = 1.0                   # passes over each rollout; a fraction trains on a random part of it
    minibatches: int = 32                 # 1024 samples each at the defaults: many small Adam steps learn fastest
    lr: float = 3e-3
    lr_final_frac: float = 0.1            # learning rate decays linearly to lr * this over the budget
    gamma: float = 0.98
    gae_lambda: float = 0.95
    adv_norm: str = "batch"               # advantages normalized over the batch, or within each task ("task")
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
    curriculum: str = ""                  # "" off; "success[:TASK,...]": sim.curriculum changes the task from per-task success

    def validate(self) -> None:
        problems = []
        if self.num_drones < 1:
            problems.append("num_drones must be at least 1")
        if self.horizon < 2:
            problems.append("horizon must be at least 2")
        if self.minibatches < 1 or not self.epochs > 0:
            problems.append("epochs must be positive and minibatches at least 1")
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
        if self.adv_norm not in ("task", "batch"):
            problems.append(f"adv_norm must be task or batch, got {self.adv_norm!r}")
        if self.curriculum:
            from sim.curriculum import CurriculumError, parse_mode
            try:
                parse_mode(self.curriculum)
            except CurriculumError as exc:
                problems.append(str(exc))
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
# The training forward and backward passes. The policy's parameters become views of one flat
# tensor (FlatParameters), so a step is one all-reduce, one norm and one fused Adam kernel. The
# feed-forward actor and critic (FusedActorCritic) run side by side as one batch of two ([2, B, H]
# activations, one baddbmm a layer) with their backward pass written out: no autograd graph, no
# per-op bookkeeping. The recurrent policy goes through autograd (actor_critic).
# --------------------------------------------------------------------------------------------
LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
TANH_VIA_SIGMOID = False   # choose_tanh() sets it: which of the two measured faster on this CPU


def tanh_(t: torch.Tensor) -> torch.Tensor:
    """tanh in place: torch's own, or 2 sigmoid(2x) - 1 (within 2e-7 of it) where that is faster
    (an AMD EPYC: torch's CPU tanh cost six times its sigmoid; an Intel Xeon: tanh is the faster)."""
    return t.mul_(2.0).sigmoid_().mul_(2.0).sub_(1.0) if TANH_VIA_SIGMOID else t.tanh_()


def choose_tanh(device: torch.device) -> bool:
    """Times both tanh forms on a minibatch-sized block (about 2 ms) and keeps the faster."""
    global TANH_VIA_SIGMOID
    best = {False: math.inf, True: math.inf}
    if device.type == "cpu":
        block = torch.randn(1024, 128)
        for _ in range(5):
            for via in best:
                TANH_VIA_SIGMOID, t = via, block.clone()
                start = time.perf_counter()
                tanh_(t)
                best[via] = min(best[via], time.perf_counter() - start)
    TANH_VIA_SIGMOID = best[True] < best[False]
    return TANH_VIA_SIGMOID


class FastTanh(torch.autograd.Function):
    """tanh as 2 sigmoid(2x) - 1 for autograd, with tanh's own backward (1 - y^2)."""

    @staticmethod
    def forward(ctx, x):
        y = torch.sigmoid(x * 2.0).mul_(2.0).sub_(1.0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        return torch.ops.aten.tanh_backward(grad, ctx.saved_tensors[0])


def run_mlp(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """`layers` (Linear / Tanh, nested Sequentials) applied to `x` with the faster tanh: the same
    function as layers(x)."""
    for layer in layers:
        if isinstance(layer, nn.Sequential):
            x = run_mlp(layer, x)
        elif isinstance(layer, nn.Tanh):
            if not TANH_VIA_SIGMOID:
                x = torch.tanh(x)
            else:
                x = FastTanh.apply(x) if torch.is_grad_enabled() else torch.sigmoid(x * 2.0).mul_(2.0).sub_(1.0)
        else:
            x = layer(x)
    return x


def actor_critic(policy: Policy, x: torch.Tensor, hover: torch.Tensor, state: torch.Tensor | None = None):
    """(action mean, value, recurrent state) for normalized observations `x` [B, OBS] and the
    raw hover-action observation `hover` [B], through autograd: Policy.action_mean and the
    critic, without normalizing again."""
    h = run_mlp(policy.actor_body, x)
    if policy.recurrent:
        h = state = policy.gru(h, state)
    mean = torch.addmm(policy.mean.bias, h, policy.mean.weight.t())
    return torch.addcmul(mean, hover.unsqueeze(-1), policy.hover_prior), run_mlp(policy.critic, x).squeeze(-1), state


class FlatParameters:
    """`params` (every parameter of a module, in this order) turned into views of one flat
    parameter, and their gradients into views of its one flat gradient. The module keeps working
    as before (what is saved, evaluated and exported); `stacked` gives consecutive parameters of
    one shape as one [k, *shape] tensor."""

    def __init__(self, params: list):
        self.params = params
        self.param = nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))
        self.param.grad = torch.zeros_like(self.param)
        self.offset, offset = {}, 0
        for p in params:
            self.offset[p] = offset
            p.data = self.param.data[offset:offset + p.numel()].view_as(p)
            offset += p.numel()

    def stacked(self, *params, grad: bool = False) -> torch.Tensor:
        start, size = self.offset[params[0]], params[0].numel()
        if any(self.offset[p] != start + k * size or p.shape != params[0].shape for k, p in enumerate(params)):
            raise ValueError("stacked parameters must be consecutive in the flat layout and of one shape")
        flat = self.param.grad if grad else self.param.data
        return flat[start:start + len(params) * size].view(len(params), *params[0].shape)

    def grad(self, param) -> torch.Tensor:
        return self.stacked(param, grad=True)[0]


def linears(module: nn.Module) -> list:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def flat_layout(policy: Policy) -> list:
    """The policy's parameters in the order FusedActorCritic needs (actor and critic layer k side
    by side); the recurrent policy's in module order."""
    if policy.recurrent:
        return list(policy.parameters())
    pairs = list(zip(linears(policy.actor_body), linears(policy.critic[0])))
    order = [p for a, c in pairs for p in (a.weight, c.weight)] + [p for a, c in pairs for p in (a.bias, c.bias)]
    order += [policy.mean.weight, policy.mean.bias, policy.critic[1].weight, policy.critic[1].bias, policy.log_std]
    assert len(order) == len(list(policy.parameters())), "flat_layout misses a parameter of the policy"
    return order


class FusedActorCritic:
    """The feed-forward actor and critic, forward and backward written out. Both read the same
    normalized observation; their hidden layers run as one batch of two ([2, B, H] activations,
    weights [2, H, in]); backward fills the flat gradient from dLoss/dmean and dLoss/dvalue."""

    def __init__(self, policy: Policy, flat: FlatParameters):
        pairs = list(zip(linears(policy.actor_body), linears(policy.critic[0])))
        self.W = [flat.stacked(a.weight, c.weight) for a, c in pairs]
        self.b = [flat.stacked(a.bias, c.bias).unsqueeze(1) for a, c in pairs]
        self.gW = [flat.stacked(a.weight, c.weight, grad=True) for a, c in pairs]
        self.gb = [flat.stacked(a.bias, c.bias, grad=True) for a, c in pairs]
        self.mean, self.value, self.prior = policy.mean, policy.critic[1], policy.hover_prior
        self.g_mean_w, self.g_mean_b = flat.grad(self.mean.weight), flat.grad(self.mean.bias)
        self.g_value_w, self.g_value_b = flat.grad(self.value.weight), flat.grad(self.value.bias)
        self.saved = []

    def forward(self, x: torch.Tensor, hover: torch.Tensor, keep: bool = False):
        """(action mean [B, A], value [B]) for normalized observations x [B, OBS] and the raw
        hover-action observation [B]; keep: hold the activations for backward."""
        h = x.expand(2, *x.shape)
        saved = [h]
        for W, b in zip(self.W, self.b):
            h = tanh_(torch.baddbmm(b, h, W.transpose(1, 2)))
            saved.append(h)
        mean = torch.addmm(self.mean.bias.data, h[0], self.mean.weight.data.t())
        value = torch.addmm(self.value.bias.data, h[1], self.value.weight.data.t()).squeeze(-1)
        self.saved = saved if keep else []
        return mean.addcmul_(hover.unsqueeze(-1), self.prior), value

    def backward(self, g_mean: torch.Tensor, g_value: torch.Tensor) -> None:
        """Writes the gradients of every weight but log_std, from the last forward(keep=True)."""
        saved, h = self.saved, self.saved[-1]
        torch.mm(g_mean.t(), h[0], out=self.g_mean_w)
        torch.sum(g_mean, 0, out=self.g_mean_b)
        torch.mm(g_value.unsqueeze(0), h[1], out=self.g_value_w)
        torch.sum(g_value, 0, keepdim=True, out=self.g_value_b)
        dh = g_mean.new_empty(2, *h.shape[1:])
        torch.mm(g_mean, self.mean.weight.data, out=dh[0])
        torch.outer(g_value, self.value.weight.data[0], out=dh[1])
        for k in reversed(range(len(self.W))):
            dz = torch.ops.aten.tanh_backward(dh, saved[k + 1])            # dh (1 - h^2)
            torch.bmm(dz.transpose(1, 2), saved[k], out=self.gW[k])
            torch.sum(dz, 1, out=self.gb[k])
            if k:
                dh = torch.bmm(dz, self.W[k])
        self.saved = []


class FlatAdam:
    """Adam on one flat parameter, the same arithmetic as torch.optim.Adam: five tensor ops a
    step. (torch's Optimizer.step spent about 0.3 ms of Python per call here around its 0.04 ms
    fused kernel: 0.3 us per sample at 32 minibatches of 1024.)"""

    def __init__(self, param: nn.Parameter, lr: float, betas=(0.9, 0.999), eps: float = 1e-5):
        self.param, self.lr, self.betas, self.eps, self.steps = param, lr, betas, eps, 0
        self.m, self.v = torch.zeros_like(param.data), torch.zeros_like(param.data)

    def step(self) -> None:
        self.steps += 1
        (b1, b2), g = self.betas, self.param.grad
        self.m.lerp_(g, 1.0 - b1)
        self.v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
        denom = self.v.sqrt().div_(math.sqrt(1.0 - b2 ** self.steps)).add_(self.eps)
        self.param.data.addcdiv_(self.m, denom, value=-self.lr / (1.0 - b1 ** self.steps))


def ppo_loss_gradients(mean, value, log_std, act, old_logp, adv, ret, config: TrainConfig):
    """PPO's losses and their gradients by the action mean, the value and log_std, written out.
    z = (act - mean) / std, logp = -|z|^2 / 2 - sum(log_std) - const, r = exp(logp - old_logp),
    loss = mean(max(-adv r, -adv clip(r))) + vf_coef mean((value - ret)^2) / 2 - ent_coef entropy.
    dloss/dlogp = -adv r / B where the unclipped term is the larger, else 0; dlogp/dmean = z / std;
    dlogp/dlog_std = z^2 - 1; dentropy/dlog_std = 1."""
    B = mean.shape[0]
    inv_std = torch.exp(-log_std)
    z = (act - mean).mul_(inv_std)
    logp = z.pow(2).sum(-1).mul_(-0.5).sub_(log_std.sum() + ACTION_SIZE * LOG_SQRT_2PI)
    ratio = (logp - old_logp).exp_()
    surrogate, clipped = -adv * ratio, -adv * ratio.clamp(1.0 - config.clip, 1.0 + config.clip)
    policy_loss = torch.maximum(surrogate, clipped).mean()
    err = value - ret
    value_loss = 0.5 * err.pow(2).mean()
    g_logp = torch.where(surrogate >= clipped, surrogate, 0.0).div_(B).unsqueeze(-1)
    g_mean = (z * inv_std).mul_(g_logp)
    g_log_std = (z * z).sub_(1.0).mul_(g_logp).sum(0).sub_(config.ent_coef)
    return policy_loss, value_loss, g_mean, err.mul_(config.vf_coef / B), g_log_std


def ppo_loss(mean, value, log_std, act, old_logp, adv, ret, config: TrainConfig):
    """The same losses through autograd (the recurrent policy; the tests check the two agree)."""
    z = (act - mean) / log_std.exp()
    logp = -0.5 * z.pow(2).sum(-1) - log_std.sum() - ACTION_SIZE * LOG_SQRT_2PI
    ratio = (logp - old_logp).exp()
    policy_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - config.clip, 1 + config.clip)).mean()
    value_loss = 0.5 * (value - ret).pow(2).mean()
    entropy = log_std.sum() + ACTION_SIZE * (0.5 + LOG_SQRT_2PI)   # of the Gaussian, per sample
    return policy_loss, value_loss, policy_loss + config.vf_coef * value_loss - config.ent_coef * entropy


def pick_threads(requested: int, local_processes: int = 1) -> int:
    """Torch CPU threads: `requested` if set; else the cores this process may use (shared with
    the other local ranks) minus the load others put on them, and at least 1. Threads that wait
    for busy cores are slower than one thread, so a loaded machine gets one."""
    if requested > 0:
        return requested
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return max(1, int((cpus - load) / local_processes + 0.5))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but torch sees no CUDA GPU: use --train.device cpu")
    return torch.device(name)


def snapshot_path(output: str, elapsed_s: float) -> str:
    return f"{os.path.splitext(output)[0]}.at{elapsed_s:05.1f}s.pt"


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


def normalize_advantages(adv: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
    """Zero mean, unit spread: over the whole rollout, or within each task where `task` (the task id
    of every sample) is given, so that one task's large rewards (race gates) cannot shrink the other
    tasks' share of the gradient. Measured (README, the generalist): with race drawn twice as often,
    per task saved hover and formation from collapsing to 0 %; with every task drawn alike it lost to
    the batch form on every task, so the batch form is the default. Both divide by the population
    std (a task with one sample in the rollout has no sample std)."""
    if task is None:
        return (adv - adv.mean()) / (adv.std(correction=0) + 1e-8)
    out = torch.empty_like(adv)
    for k in torch.unique(task):
        mask = task == k
        a = adv[mask]
        out[mask] = (a - a.mean()) / (a.std(correction=0) + 1e-8)
    return out


def _rollout_buffers(T: int, N: int, hidden: int, recurrent: bool, per_task: bool, device) -> dict:
    z = lambda *shape: torch.zeros(*shape, device=device)  # noqa: E731
    return {"obs": z(T, N, OBS_SIZE), "x": z(T, N, OBS_SIZE), "act": z(T, N, ACTION_SIZE),
            "rew": z(T, N), "done": z(T, N), "val": z(T, N), "task": z(T, N) if per_task else None,
            "state": z(T, N, hidden) if recurrent else None}


class Distributed:
    """Data-parallel training over torch.distributed (torchrun sets WORLD_SIZE, RANK, LOCAL_RANK):
    every rank steps its own C env; gradients, observation statistics and the stop decision are
    all-reduced, so the weights stay identical; rank 0 writes the checkpoint. One process: no-op."""

    def __init__(self, device_name: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(self.world)))
        self.started = False
        if self.world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if device_name.startswith("cuda") else "gloo"
            torch.distributed.init_process_group(backend)
            self.started = True

    def device(self, name: str) -> torch.device:
        device = pick_device(name)
        if device.type == "cuda" and self.world > 1:
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        return device

    def all_reduce(self, t: torch.Tensor, op=None) -> torch.Tensor:
        if self.world > 1:
            torch.distributed.all_reduce(t, op or torch.distributed.ReduceOp.SUM)
        return t

    def broadcast_parameters(self, module: nn.Module) -> None:
        if self.world > 1:
            for t in list(module.parameters()) + list(module.buffers()):
                torch.distributed.broadcast(t.data, 0)

    def average_gradients(self, grad: torch.Tensor) -> None:
        if self.world > 1:
            self.all_reduce(grad).div_(self.world)

    def weight_digests(self, policy: Policy) -> list[str]:
        """sha256 of every rank's weights and statistics (the trainer checks they are one)."""
        flat = torch.cat([t.detach().double().reshape(-1) for t in policy.state_dict().values()])
        gathered = [flat.clone() for _ in range(self.world)]     # on the policy's device (nccl needs CUDA)
        if self.world > 1:
            torch.distributed.all_gather(gathered, flat)
        return [hashlib.sha256(d.cpu().numpy().tobytes()).hexdigest() for d in gathered]

    def close(self) -> None:
        if self.started:
            torch.distributed.destroy_process_group()


def _update_normalization(policy: Policy, obs: torch.Tensor, dist: Distributed, scratch=None) -> None:
    """Merges a rollout's observations [..., OBS] (of every rank) into the running mean / variance;
    `scratch`: a free tensor of obs's size to work in (a fresh one of 10 MB costs more than the sums)."""
    flat = obs.reshape(-1, obs.shape[-1])
    # float32 sums of what is left after the running mean: no cancellation
    shifted = torch.sub(flat, policy.obs_mean, out=None if scratch is None else scratch.view_as(flat))
    moments = dist.all_reduce(torch.stack([shifted.sum(0).double(), shifted.mul_(shifted).sum(0).double(),
                                           torch.full_like(policy.obs_mean, flat.shape[0], dtype=torch.float64)]))
    n = moments[2, 0]
    delta, var = moments[0] / n, (moments[1] / n - (moments[0] / n) ** 2).clamp_min(0.0)
    total = policy.obs_count + n
    m2 = policy.obs_var.double() * policy.obs_count + var * n + delta.pow(2) * policy.obs_count * n / total
    policy.obs_mean.add_((delta * n / total).float())
    policy.obs_var.copy_((m2 / total).float())
    policy.obs_count.copy_(total)


def train(config: TrainConfig, progress_stream=sys.stderr) -> dict:
    """Trains a policy and writes the checkpoint; returns the final metrics. Under torchrun, every
    rank runs this; rank 0 writes the checkpoint."""
    config.validate()
    dist = Distributed(config.device)
    try:
        return _train(config, dist, progress_stream)
    finally:
        dist.close()


def _train(config: TrainConfig, dist: Distributed, progress_stream) -> dict:
    device = dist.device(config.device)
    threads = pick_threads(config.threads, dist.local_world)
    torch.set_num_threads(threads)
    torch.manual_seed(config.seed)
    env_seed = config.seed + 7919 * dist.rank
    env = DroneEnv(config.num_drones, config.profile, action_mode=config.action_mode,
                   task=task_config(**{"task_prob": parse_tasks(config.tasks), **config.task}), seed=env_seed)
    obs_np, _ = env.reset(seed=env_seed)
    curriculum = None
    if config.curriculum:
        from sim.curriculum import Curriculum   # here: only a curriculum run needs it
        curriculum = Curriculum.from_config(config.curriculum, env.task)
    N, T = config.num_drones, config.horizon
    policy = Policy(OBS_SIZE, ACTION_SIZE, config.hidden, config.layers, config.recurrent, config.init_log_std,
                    config.action_mode).to(device)
    dist.broadcast_parameters(policy)
    flat = FlatParameters(flat_layout(policy))
    fused = None if config.recurrent else FusedActorCritic(policy, flat)
    optimizer = FlatAdam(flat.param, lr=config.lr)
    choose_tanh(device)
    hover_index = obs_slice("hover_action").start
    buf = _rollout_buffers(T, N, config.hidden, config.recurrent, config.adv_norm == "task", device)
    state = policy.initial_state(N, device)
    _update_normalization(policy, torch.as_tensor(obs_np, device=device), dist)   # statistics of the first states
    # the env reads its actions from, and writes its outputs to, C memory; on the CPU torch shares it
    actions_np = env.core.actions
    actions_cpu = torch.from_numpy(actions_np)
    task_now = torch.from_numpy(env.core.drone["task_id"][0])   # each drone's task in the episode it flies

    log_path = "" if dist.rank else (config.log_jsonl or os.path.splitext(config.output)[0] + ".jsonl")
    progress = Progress(config, log_path, progress_stream if dist.rank == 0 else io.StringIO())
    start = time.monotonic()
    steps, updates = 0, 0
    next_snapshot_s = config.snapshot_every_s
    timing = {"env_s": 0.0, "rollout_s": 0.0, "update_s": 0.0}   # where the time goes (env_s is inside rollout_s)
    recent = {"success": [], "crash": [], "return": [], "task": []}
    metrics = {}
    losses = torch.zeros(3)
    shuffled = {}   # the update's shuffled samples, reused
    while True:
        elapsed = time.monotonic() - start
        frac_done = torch.tensor([max(elapsed / config.time_budget_s, steps * dist.world / config.total_steps)],
                                 device=device)   # every rank stops at the same update
        frac_done = float(dist.all_reduce(frac_done, torch.distributed.ReduceOp.MAX if dist.world > 1 else None))
        if frac_done >= 1.0:
            break
        optimizer.lr = config.lr * (1.0 - (1.0 - config.lr_final_frac) * frac_done)
        # ---- rollout: normalization statistics stay fixed within one ----
        t_rollout = time.perf_counter()
        finals = []                                  # (t, index, final obs) of time-limited episodes
        with torch.no_grad():
            inv_std, obs_mean = 1.0 / policy.obs_std(), policy.obs_mean.clone()
            std = policy.log_std.exp()
            noise = torch.randn(T, N, ACTION_SIZE, device=device)   # the rollout's exploration, drawn at once
            for t in range(T):
                obs = buf["obs"][t]
                obs.copy_(torch.from_numpy(obs_np))
                x = torch.clamp((obs - obs_mean).mul_(inv_std), -10.0, 10.0, out=buf["x"][t])
                hover = obs[:, hover_index]
                if config.recurrent:
                    buf["state"][t] = state
                if fused:
                    mean, buf["val"][t] = fused.forward(x, hover)
                else:
                    mean, buf["val"][t], state = actor_critic(policy, x, hover, state)
                action = torch.addcmul(mean, noise[t], std, out=buf["act"][t])
                if device.type == "cpu":
                    torch.clamp(action, -1.0, 1.0, out=actions_cpu)
                else:
                    actions_cpu.copy_(torch.clamp(action, -1.0, 1.0))
                if buf["task"] is not None:
                    buf["task"][t].copy_(task_now)
                t_env = time.perf_counter()
                obs_np, rew_np, term_np, trunc_np, info = env.step(actions_np)
                timing["env_s"] += time.perf_counter() - t_env
                buf["rew"][t].copy_(torch.from_numpy(rew_np))
                buf["done"][t].copy_(torch.from_numpy(term_np | trunc_np))
                if "episode" in info:
                    if trunc_np.any():  # a time limit is not a terminal state: bootstrap from the last state
                        idx = np.flatnonzero(trunc_np)
                        finals.append((t, torch.from_numpy(idx), torch.from_numpy(info["final_obs"][idx].copy())))
                    ep = info["episode"]
                    for k in recent:
                        recent[k].append(ep[k])
                    if config.recurrent:
                        state[torch.as_tensor(info["done_index"], device=device)] = 0.0
            steps += N * T
            buf["logp"] = noise.pow_(2).sum(-1).mul_(-0.5).sub_(policy.log_std.sum() + ACTION_SIZE * LOG_SQRT_2PI)
            buf["hover"] = buf["obs"][..., hover_index]
            if finals:   # all the rollout's bootstrap values in one forward pass
                ts = torch.cat([torch.full((len(i),), t) for t, i, _ in finals]).to(device)
                idx = torch.cat([i for _, i, _ in finals]).to(device)
                final_obs = torch.cat([o for _, _, o in finals]).to(device)
                fx = torch.clamp((final_obs - obs_mean) * inv_std, -10.0, 10.0)
                if fused:
                    final_v = fused.forward(fx, final_obs[:, hover_index])[1]
                else:
                    final_v = run_mlp(policy.critic, fx).squeeze(-1)
                buf["rew"].index_put_((ts, idx), config.gamma * final_v, accumulate=True)
            # ---- advantages (GAE) ----
            next_obs = torch.as_tensor(obs_np, device=device)
            next_x = torch.clamp((next_obs - obs_mean) * inv_std, -10.0, 10.0)
            next_hover = next_obs[:, hover_index]
            next_value = (fused.forward(next_x, next_hover) if fused else
                          actor_critic(policy, next_x, next_hover, state))[1]
            notdone = 1.0 - buf["done"]
            next_val = torch.cat([buf["val"][1:], next_value.unsqueeze(0)])
            adv = buf["rew"] + config.gamma * next_val * notdone - buf["val"]    # the TD errors, then summed back
            decay = config.gamma * config.gae_lambda * notdone
            for t in reversed(range(T - 1)):
                adv[t].addcmul_(decay[t], adv[t + 1])
            returns = adv + buf["val"]
            adv = normalize_advantages(adv, buf["task"])
        timing["rollout_s"] += time.perf_counter() - t_rollout
        t_update = time.perf_counter()
        # ---- PPO update: minibatches of samples (of whole drones for the recurrent policy, in time order) ----
        grad, log_std = flat.param.grad, policy.log_std
        flat_buf = {k: buf[k].reshape(T * N, -1).squeeze(-1) for k in ("x", "hover", "act", "logp")}
        flat_buf["adv"], flat_buf["ret"] = adv.reshape(-1), returns.reshape(-1)
        for j in range(max(1, round(config.epochs * config.minibatches))):
            if fused:   # shuffled once a pass, then contiguous minibatches
                if j % config.minibatches == 0:
                    perm = torch.randperm(T * N, device=device)
                    shuffled = {k: torch.index_select(v, 0, perm, out=shuffled.get(k)) for k, v in flat_buf.items()}
                size = T * N // config.minibatches
                mb = {k: v[(j % config.minibatches) * size:(j % config.minibatches + 1) * size]
                      for k, v in shuffled.items()}
                with torch.no_grad():
                    mean, value = fused.forward(mb["x"], mb["hover"], keep=True)
                    policy_loss, value_loss, g_mean, g_value, g_log_std = ppo_loss_gradients(
                        mean, value, log_std.data, mb["act"], mb["logp"], mb["adv"], mb["ret"], config)
                    fused.backward(g_mean, g_value)
                    flat.grad(log_std).copy_(g_log_std)
            else:
                if j % config.minibatches == 0:
                    chunks = torch.randperm(N, device=device).chunk(config.minibatches)
                mb = chunks[j % config.minibatches]
                h, means, values = buf["state"][0, mb], [], []
                for t in range(T):
                    h = h * notdone[t - 1, mb].unsqueeze(-1) if t > 0 else h
                    m, v, h = actor_critic(policy, buf["x"][t, mb], buf["hover"][t, mb], h)
                    means.append(m)
                    values.append(v)
                policy_loss, value_loss, loss = ppo_loss(
                    torch.cat(means), torch.cat(values), log_std, buf["act"][:, mb].reshape(-1, ACTION_SIZE),
                    buf["logp"][:, mb].reshape(-1), adv[:, mb].reshape(-1), returns[:, mb].reshape(-1), config)
                for g, p in zip(torch.autograd.grad(loss, flat.params), flat.params):
                    flat.grad(p).copy_(g)
            with torch.no_grad():
                dist.average_gradients(grad)
                grad.mul_((config.max_grad_norm / (grad.norm() + 1e-6)).clamp_max(1.0))   # clip the norm
                optimizer.step()
        entropy = log_std.detach().sum() + ACTION_SIZE * (0.5 + LOG_SQRT_2PI)   # of the Gaussian, per sample
        losses = torch.stack([policy_loss.detach(), value_loss.detach(), entropy.detach()]).cpu()
        _update_normalization(policy, buf["obs"], dist, scratch=buf["x"])   # x is free until the next rollout
        updates += 1
        timing["update_s"] += time.perf_counter() - t_update
        elapsed = time.monotonic() - start
        for k in recent:
            recent[k] = [np.concatenate(recent[k])[-4 * N:]] if recent[k] else []
        ep = {k: v[0] if v else np.zeros(0) for k, v in recent.items()}
        metrics = {
            "steps": steps * dist.world, "updates": updates, "elapsed_s": elapsed,
            "steps_per_s": steps * dist.world / elapsed, "time_left_s": max(0.0, config.time_budget_s - elapsed),
            "episode_return": float(ep["return"].mean()) if len(ep["return"]) else 0.0,
            "success_rate": float(ep["success"].mean()) if len(ep["success"]) else 0.0,
            "crash_rate": float(ep["crash"].mean()) if len(ep["crash"]) else 0.0,
            "policy_loss": float(losses[0]), "value_loss": float(losses[1]), "entropy": float(losses[2]),
            "lr": optimizer.lr, "log_std": policy.log_std.detach().cpu().tolist(),
            **{f"time_{k}": v for k, v in timing.items()}, "threads": threads, "world_size": dist.world,
            "success_per_task": per_task_success(ep),
        }
        if curriculum:
            changes = curriculum.update(metrics["success_per_task"], metrics["steps"])
            if changes:
                env.set_task(**changes)
            metrics["curriculum"] = curriculum.state()
        progress.update(metrics)
        if config.snapshot_every_s and elapsed >= next_snapshot_s:
            if dist.rank == 0:
                save_checkpoint(snapshot_path(config.output, elapsed), policy, config, env, steps * dist.world, metrics)
            next_snapshot_s += config.snapshot_every_s
    progress.update(metrics, final=True)
    progress.close()
    policy.eval()
    if dist.world > 1:
        digests = dist.weight_digests(policy)
        if len(set(digests)) != 1:
            raise RuntimeError(f"data-parallel ranks ended with different weights ({digests}); this is a bug")
        metrics["ddp"] = {"world_size": dist.world, "rank_weight_sha256": digests}
    policy.cpu()
    if dist.rank:
        return metrics
    evaluation = None
    if config.eval_episodes:
        eval_task = curriculum.full_task(env.task) if curriculum else env.task   # the task asked for, not the stage reached
        evaluation = evaluate(policy, env.profile, config.action_mode, config.eval_episodes, eval_task)
        metrics["eval_success_rate"], metrics["eval_crash_rate"] = evaluation["success_rate"], evaluation["crash_rate"]
    save_checkpoint(config.output, policy, config, env, steps * dist.world, metrics, evaluation)
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
