"""The policy contract: the metadata an exported ONNX carries, and the one function that loads
an ONNX policy and refuses it when it does not fit the installed sim or the link.

    policy = load_policy("policy.onnx", action_modes=("ctbr",))
    action, state = policy.run(obs)            # obs [OBS_SIZE] or [batch, OBS_SIZE], raw, as sim.observe builds it
    policy.metadata["control_hz"], policy.action_mode, policy.metadata["action_scaling"]

Only numpy, onnxruntime and the sim's C layout are needed here (no torch, no onnx): this is what
the flight runner imports.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import textwrap

import numpy as np

from skyloop.inputs import loads_json, number
from sim.core import ACTION_MODES, ACTION_SIZE, OBS_FIELDS, OBS_LAYOUT_VERSION, OBS_SIZE

log = logging.getLogger(__name__)

FORMAT = "skyloop.onnx_policy/1"
OBS_INPUT, STATE_INPUT, ACTION_OUTPUT, STATE_OUTPUT = "obs", "state", "action", "state_out"
DIGEST_KEY = "contract_sha256"
#: what a contract's numbers may be: a policy outside these is refused, whatever its checksum says
CONTROL_HZ_RANGE = (10.0, 1000.0)
RATE_MAX_LIMIT_RAD_S = 50.0          # ~2900 deg/s, beyond any flight controller's rate limit
MAX_STATE_SIZE = 4096

#: Every metadata property an export writes, in the order `--inspect` shows them, with a label.
#: Values are stored as plain text for the STRING_KEYS and as JSON for the others.
LABELS = {
    "format": "format",
    "obs_layout_version": "obs layout version",
    "obs_size": "obs size",
    "obs_fields": "obs fields",
    "action_size": "action size",
    "action_mode": "action mode",
    "action_scaling": "action scaling",
    "control_hz": "control rate (Hz)",
    "recurrent": "recurrent",
    "state_size": "state size",
    "tasks": "tasks",
    "task": "task config",
    "profile": "profile",
    "sim_git_revision": "sim git revision",
    "training_steps": "training steps",
    "eval_success_rate": "eval success",
    "training_success_rate": "training success",
    "checkpoint_sha256": "checkpoint sha256",
    "parity_samples": "parity samples",
    "parity_max_abs_error": "parity max |diff|",
    DIGEST_KEY: "contract sha256",
}
STRING_KEYS = {"format", "action_mode", "sim_git_revision", "checkpoint_sha256", DIGEST_KEY}
#: What a policy cannot be flown without.
REQUIRED = ("format", "obs_layout_version", "obs_size", "obs_fields", "action_size", "action_mode",
            "action_scaling", "control_hz", "recurrent", "state_size", DIGEST_KEY)


class PolicyContractError(ValueError):
    """An ONNX policy that must not be flown with this sim or link; the message says why and what to do."""


def installed_layout() -> dict:
    """The observation / action layout of the installed sim, as metadata values."""
    return {"obs_layout_version": OBS_LAYOUT_VERSION, "obs_size": OBS_SIZE,
            "obs_fields": [[name, offset, count] for name, offset, count in OBS_FIELDS], "action_size": ACTION_SIZE}


def contract_digest(props: dict) -> str:
    """A checksum over every metadata property except itself: a hand-edited contract no longer matches."""
    body = json.dumps({k: v for k, v in props.items() if k != DIGEST_KEY}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def encode_metadata(values: dict) -> dict:
    """{key: value} -> {key: text} as stored in the ONNX, with the contract checksum added."""
    props = {k: (str(v) if k in STRING_KEYS else json.dumps(v)) for k, v in values.items() if k != DIGEST_KEY}
    props[DIGEST_KEY] = contract_digest(props)
    return props


def decode_metadata(props: dict, where: str = "policy") -> dict:
    values = {}
    for key, text in props.items():
        if key in STRING_KEYS or key not in LABELS:
            values[key] = text
            continue
        try:
            values[key] = loads_json(text, key, PolicyContractError)
        except PolicyContractError:
            raise PolicyContractError(f"{where}: metadata {key!r} is not valid ({text[:60]!r}): "
                                      f"re-export it with `skyloop export POLICY.pt -o {where}`") from None
    return values


def read_metadata(path: str) -> dict:
    """The raw {key: text} metadata properties of an ONNX file (onnxruntime only)."""
    return dict(_session(path).get_modelmeta().custom_metadata_map)


def _session(path, threads: int = 1):
    """An onnxruntime CPU session on a file (or serialized model bytes), `threads` intra-op threads."""
    import onnxruntime as ort

    if isinstance(path, str) and not os.path.exists(path):
        raise PolicyContractError(f"{path}: no such policy file (export one with `skyloop export POLICY.pt -o {path}`)")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph / ... kinds
        where = path if isinstance(path, str) else "the exported graph"
        raise PolicyContractError(f"{where}: not a readable ONNX model ({exc.__class__.__name__}: "
                                  f"{str(exc).strip()[:200]}); re-export it with `skyloop export`") from None


class OnnxPolicy:
    """A loaded, validated policy: raw observations in, actions in [-1, 1] out."""

    def __init__(self, path: str, session, metadata: dict):
        self.path, self.session, self.metadata = path, session, metadata
        self.action_mode: str = metadata["action_mode"]
        self.control_hz: float = float(metadata["control_hz"])
        self.recurrent: bool = bool(metadata["recurrent"])
        self.state_size: int = int(metadata["state_size"])

    def initial_state(self, batch: int = 1) -> np.ndarray | None:
        return np.zeros((batch, self.state_size), np.float32) if self.recurrent else None

    def run(self, obs, state=None):
        """(action, state): obs [OBS_SIZE] gives action [4]; obs [batch, OBS_SIZE] gives [batch, 4].
        A recurrent policy starts from zeros when state is None; pass the returned state back next tick."""
        obs = np.asarray(obs, dtype=np.float32)
        single = obs.ndim == 1
        batch = obs.reshape(1, -1) if single else obs
        if not self.recurrent:
            action = self.session.run(None, {OBS_INPUT: batch})[0]
            return (action[0] if single else action), None
        if state is None:
            state = self.initial_state(batch.shape[0])
        state = np.asarray(state, dtype=np.float32).reshape(batch.shape[0], self.state_size)
        action, state = self.session.run(None, {OBS_INPUT: batch, STATE_INPUT: state})
        return (action[0] if single else action), state


def check_contract(values: dict, where: str, action_modes) -> None:
    """Raises PolicyContractError when the decoded metadata does not fit the installed sim or the link."""
    sim = installed_layout()
    if values["obs_layout_version"] != sim["obs_layout_version"] or values["obs_size"] != sim["obs_size"]:
        raise PolicyContractError(
            f"{where}: trained for observation layout v{values['obs_layout_version']} ({values['obs_size']} values), "
            f"but the installed sim builds layout v{sim['obs_layout_version']} ({sim['obs_size']} values): retrain the "
            f"policy with this sim (`skyloop train`) and re-export it (`skyloop export POLICY.pt -o {where}`)")
    if values["obs_fields"] != sim["obs_fields"]:
        raise PolicyContractError(
            f"{where}: observation fields {_fields_text(values['obs_fields'])} differ from the installed sim's "
            f"{_fields_text(sim['obs_fields'])} (same layout version: the sim changed without bumping "
            f"SL_OBS_LAYOUT_VERSION): retrain and re-export the policy")
    if values["action_size"] != sim["action_size"]:
        raise PolicyContractError(f"{where}: {values['action_size']} action values, the sim uses {sim['action_size']}: "
                                  f"retrain and re-export the policy")
    if values["action_mode"] not in ACTION_MODES:
        raise PolicyContractError(f"{where}: unknown action mode {values['action_mode']!r} (the sim knows "
                                  f"{sorted(ACTION_MODES)}): retrain with --train.action_mode and re-export")
    if values["action_mode"] not in action_modes:
        raise PolicyContractError(
            f"{where}: a {values['action_mode']!r} policy, but this link can fly only {', '.join(action_modes) or 'nothing'}: "
            f"fly a policy trained with --train.action_mode {' or '.join(action_modes) or '...'} (or choose a link / --mode that "
            f"accepts {values['action_mode']} commands)")
    problems: list = []
    number(values["control_hz"], "control_hz", problems, lo=CONTROL_HZ_RANGE[0], hi=CONTROL_HZ_RANGE[1], unit="Hz")
    if not isinstance(values["recurrent"], bool):
        problems.append(f"recurrent must be true or false, got {values['recurrent']!r}")
    number(values["state_size"], "state_size", problems, lo=0, hi=MAX_STATE_SIZE, integer=True)
    scaling = values["action_scaling"]
    if not isinstance(scaling, dict):
        problems.append(f"action_scaling must be an object, got {str(scaling)[:60]}")
    elif "rate_max_rad_s" in scaling:
        rate_max = scaling["rate_max_rad_s"]
        for k, v in enumerate(rate_max if isinstance(rate_max, list) and len(rate_max) == 3 else [rate_max]):
            number(v, f"action_scaling.rate_max_rad_s{f'[{k}]' if isinstance(rate_max, list) else ''}", problems,
                   lo=0.0, hi=RATE_MAX_LIMIT_RAD_S, lo_open=True, unit="rad/s")
    if problems:
        raise PolicyContractError(f"{where}: contract values out of range: {'; '.join(problems)}: "
                                  f"re-export it with `skyloop export POLICY.pt -o {where}`")


def _check_graph(session, values: dict, where: str) -> None:
    """The graph's inputs and outputs must be what the metadata promises."""
    state = values["state_size"] if values["recurrent"] else None
    want_in = {OBS_INPUT: values["obs_size"], **({STATE_INPUT: state} if state else {})}
    want_out = {ACTION_OUTPUT: values["action_size"], **({STATE_OUTPUT: state} if state else {})}
    have_in = {a.name: a.shape[-1] for a in session.get_inputs()}
    have_out = {a.name: a.shape[-1] for a in session.get_outputs()}
    if have_in != want_in or have_out != want_out:
        raise PolicyContractError(f"{where}: the graph has inputs {have_in} and outputs {have_out}, but its metadata "
                                  f"promises {want_in} -> {want_out}: re-export it with `skyloop export`")


def load_policy(path: str, action_modes=tuple(ACTION_MODES), threads: int = 1) -> OnnxPolicy:
    """Loads an exported policy for flight, refusing it (PolicyContractError, with the fix) when its
    metadata is missing or edited, its observation layout or size differs from the installed sim,
    its graph does not match its metadata, or its action mode is not in `action_modes`."""
    action_modes = (action_modes,) if isinstance(action_modes, str) else tuple(action_modes)
    session = _session(path, threads)
    props = dict(session.get_modelmeta().custom_metadata_map)
    missing = [k for k in REQUIRED if k not in props]
    if missing:
        raise PolicyContractError(
            f"{path}: metadata missing {missing}: this model was not written by `skyloop export`, or by an older "
            f"one; export it again from its checkpoint with `skyloop export POLICY.pt -o {path}`")
    if props["format"] != FORMAT:
        raise PolicyContractError(f"{path}: contract format {props['format']!r}, this runner reads {FORMAT!r}: "
                                  f"re-export it with this version (`skyloop export POLICY.pt -o {path}`)")
    if props[DIGEST_KEY] != contract_digest(props):
        raise PolicyContractError(
            f"{path}: its metadata was edited after export (the contract checksum does not match): do not edit "
            f"the contract by hand; export it again from its checkpoint with `skyloop export POLICY.pt -o {path}`")
    values = decode_metadata(props, path)
    check_contract(values, path, action_modes)
    _check_graph(session, values, path)
    log.debug("loaded %s: %s policy at %g Hz, obs layout v%d", path, values["action_mode"], values["control_hz"],
              values["obs_layout_version"])
    return OnnxPolicy(path, session, values)


# ------------------------------------------------------------------------------------------
# `skyloop export --inspect`: the contract as a readable table
# ------------------------------------------------------------------------------------------
def _fields_text(fields) -> str:
    return " ".join(f"{name}[{offset}:{offset + count}]" for name, offset, count in fields)


def _profile_text(profile) -> str:
    if not isinstance(profile, dict):
        return str(profile)
    randomized = {k: v for k, v in (profile.get("randomization") or {}).items()
                  if any(x != 0 for x in (v if isinstance(v, list) else [v]))}
    rand = ", ".join(f"{k} {v}" for k, v in randomized.items()) or "none"
    return f"{profile.get('name', '?')} (mass {profile.get('params', {}).get('mass_kg', '?')} kg); randomization: {rand}"


def _value_text(key: str, value) -> str:
    if value is None:
        return "not recorded"
    if key == "obs_fields":
        return _fields_text(value)
    if key == "profile":
        return _profile_text(value)
    if key.endswith("success_rate") and isinstance(value, (int, float)):
        return f"{100 * value:.1f} %"
    if key == "training_steps" and isinstance(value, int):
        return f"{value:,}"
    if key == "parity_max_abs_error" and isinstance(value, (int, float)):
        return f"{value:.2g}"
    if isinstance(value, dict):
        return "; ".join(f"{k} {v if isinstance(v, str) else json.dumps(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def format_table(path: str, props: dict, width: int = 110) -> str:
    """The metadata of `path` as a two-column table, and whether it fits the installed sim."""
    values = decode_metadata(props, path)
    keys = [k for k in LABELS if k in values] + sorted(k for k in values if k not in LABELS)
    label_w = max(len(LABELS.get(k, k)) for k in keys) if keys else 10
    lines = [f"{path}: {len(props)} metadata properties"]
    for key in keys:
        chunks = textwrap.wrap(_value_text(key, values[key]), max(20, width - label_w - 4)) or [""]
        lines.append(f"  {LABELS.get(key, key):<{label_w}}  {chunks[0]}")
        lines += [f"  {'':<{label_w}}  {c}" for c in chunks[1:]]
    try:
        load_policy(path)
        lines.append(f"  {'verdict':<{label_w}}  fits the installed sim (obs layout v{OBS_LAYOUT_VERSION}, {OBS_SIZE} values)")
    except PolicyContractError as exc:
        lines.append(f"  {'verdict':<{label_w}}  REFUSED: {exc}")
    return "\n".join(lines)
