"""`skyloop export --c POLICY.pt -o policy.h`: the policy as one dependency-free C header.

The header holds the weights as `static const float` arrays and one function,

    void skyloop_policy_forward(const float *obs, const float *state, float *action, float *next_state);

which does what the ONNX graph does (normalization with its clamp, the tanh MLP, the GRU cell of
a recurrent policy, the hover prior, the clip to [-1, 1]) in plain float C99 with <math.h> only.
When a C compiler is present the export compiles it and checks it against PyTorch on sim
rollouts, as the ONNX export does.
"""
from __future__ import annotations

import ctypes
import logging
import os
import shutil
import subprocess
import tempfile

import numpy as np

from policy_export.export import ExportError, check_parity, contract_values, load, replay, rollout, torch_step
from policy_export.contract import _fields_text

log = logging.getLogger(__name__)

P = "skyloop_policy"  # prefix of every C name
P_UPPER = P.upper()


class CompilerNotFound(OSError):
    """No C compiler on this machine."""


def _array(name: str, values, comment: str = "") -> str:
    flat = np.asarray(values, np.float32).reshape(-1)
    items = [f"{v:.8e}f" for v in flat.tolist()]
    rows = ",\n".join("    " + ", ".join(items[i:i + 6]) for i in range(0, len(items), 6))
    note = f"  /* {comment} */" if comment else ""
    return f"static const float {P}_{name}[{len(items)}] = {{{note}\n{rows}\n}};\n"


def _numpy(t):
    return t.detach().cpu().numpy().astype(np.float32)


def network(policy) -> dict:
    """The numbers of the policy, read from its modules; refuses a structure this file does not know."""
    from torch import nn

    body = list(policy.actor_body)
    kinds = [type(m) for m in body]
    if kinds != [nn.Linear, nn.Tanh] * (len(body) // 2) or not body:
        raise ExportError(f"the C export knows Linear+Tanh MLP bodies; this policy has {[k.__name__ for k in kinds]}: "
                          f"extend policy_export/c_export.py for it, or export to ONNX")
    if policy.gru is not None and not isinstance(policy.gru, nn.GRUCell):
        raise ExportError(f"the C export knows a GRUCell; this policy has {type(policy.gru).__name__}")
    return {
        # Policy.normalize: (obs - mean) / obs_std, in float32
        "obs_mean": _numpy(policy.obs_mean),
        "obs_std": _numpy(policy.obs_std()),
        "body": [(_numpy(m.weight), _numpy(m.bias)) for m in body[0::2]],  # weights [out, in] as torch
        "gru": None if policy.gru is None else tuple(_numpy(t) for t in (policy.gru.weight_ih, policy.gru.bias_ih,
                                                                         policy.gru.weight_hh, policy.gru.bias_hh)),
        "head": (_numpy(policy.mean.weight), _numpy(policy.mean.bias)),
        "hover_prior": _numpy(policy.hover_prior),
        "hover_index": int(policy.hover_index),
    }


_DENSE = f"""
/* y = b + W x, then tanh if asked. W is stored input-major, w[i * n_out + o], so the inner loop
 * runs over independent outputs (the compiler vectorizes it; no long chain of dependent adds). */
static inline void {P}_dense(const float *restrict w, const float *restrict b, const float *restrict x,
                                     float *restrict y, int n_in, int n_out, int apply_tanh) {{
    for (int o = 0; o < n_out; o++) y[o] = b[o];
    for (int i = 0; i < n_in; i++) {{
        const float xi = x[i], *wi = w + i * n_out;
        for (int o = 0; o < n_out; o++) y[o] += wi[o] * xi;
    }}
    if (apply_tanh)
        for (int o = 0; o < n_out; o++) y[o] = tanhf(y[o]);
}}
"""

_GRU = f"""
/* torch.nn.GRUCell: r = sig(Wir x + Whr h), z = sig(Wiz x + Whz h), n = tanh(Win x + r (Whn h)),
 * h' = (1 - z) n + z h (with the biases). h and h_out may be the same buffer. */
static inline void {P}_gru(const float *x, const float *h, float *h_out) {{
    float gi[3 * {P_UPPER}_STATE_SIZE], gh[3 * {P_UPPER}_STATE_SIZE], hn[{P_UPPER}_STATE_SIZE];
    {P}_dense({P}_gru_w_ih, {P}_gru_b_ih, x, gi, {P_UPPER}_GRU_INPUT, 3 * {P_UPPER}_STATE_SIZE, 0);
    {P}_dense({P}_gru_w_hh, {P}_gru_b_hh, h, gh, {P_UPPER}_STATE_SIZE, 3 * {P_UPPER}_STATE_SIZE, 0);
    for (int j = 0; j < {P_UPPER}_STATE_SIZE; j++) {{
        const int H = {P_UPPER}_STATE_SIZE;
        float r = 1.f / (1.f + expf(-(gi[j] + gh[j])));
        float z = 1.f / (1.f + expf(-(gi[H + j] + gh[H + j])));
        float n = tanhf(gi[2 * H + j] + r * gh[2 * H + j]);
        hn[j] = (1.f - z) * n + z * h[j];
    }}
    for (int j = 0; j < {P_UPPER}_STATE_SIZE; j++) h_out[j] = hn[j];
}}
"""


def c_source(net: dict, values: dict, source: str, name: str = "policy.h") -> str:
    """The header text for network `net` with contract `values`."""
    obs_size, action_size = values["obs_size"], values["action_size"]
    state_size = values["state_size"]
    widths = [obs_size] + [w.shape[0] for w, _ in net["body"]] + [action_size]
    arrays = [_array("obs_mean", net["obs_mean"], "observation normalization: mean"),
              _array("obs_std", net["obs_std"], "and sqrt(var + 1e-8)"),
              _array("hover_prior", net["hover_prior"], f"times obs[{net['hover_index']}] (hover_action), added")]
    calls, x, y = [], "a", "b"
    for k, (w, b) in enumerate(net["body"]):
        arrays += [_array(f"l{k}_w", w.T, f"body layer {k}: {w.shape[1]} -> {w.shape[0]}, tanh, [in][out]"), _array(f"l{k}_b", b)]
        calls.append(f"    {P}_dense({P}_l{k}_w, {P}_l{k}_b, {x}, {y}, {w.shape[1]}, {w.shape[0]}, 1);")
        x, y = y, x
    if net["gru"] is not None:
        w_ih, b_ih, w_hh, b_hh = net["gru"]
        arrays += [_array("gru_w_ih", w_ih.T, f"GRU input weights [{w_ih.shape[1]}][3 * {state_size}] (r, z, n)"),
                   _array("gru_b_ih", b_ih), _array("gru_w_hh", w_hh.T, "GRU state weights, [in][out]"), _array("gru_b_hh", b_hh)]
        calls.append(f"    {P}_gru({x}, state, next_state);")
        calls.append(f"    for (int j = 0; j < {P_UPPER}_STATE_SIZE; j++) {x}[j] = next_state[j];")
        widths.append(3 * state_size)
    w, b = net["head"]
    arrays += [_array("head_w", w.T, f"action head: {w.shape[1]} -> {w.shape[0]}, [in][out]"), _array("head_b", b)]
    calls.append(f"    {P}_dense({P}_head_w, {P}_head_b, {x}, {y}, {w.shape[1]}, {w.shape[0]}, 0);")
    scaling = values["action_scaling"]
    meaning = "; ".join(f"{k}: {v}" for k, v in scaling.items() if k != "range")
    gru_defines = "" if net["gru"] is None else f"#define {P_UPPER}_GRU_INPUT {net['gru'][0].shape[1]}\n"
    return f"""/* {name}: generated by `skyloop export --c` from {source}. Do not edit: export again.
 *
 *   void {P}_forward(const float *obs, const float *state, float *action, float *next_state);
 *
 * obs:     {P_UPPER}_OBS_SIZE raw floats, observation layout v{values['obs_layout_version']}, as the sim's C
 *          observation function builds them: {_fields_text(values['obs_fields'])}
 * action:  {P_UPPER}_ACTION_SIZE floats in [-1, 1], action mode "{values['action_mode']}"
 *          ({meaning})
 * state, next_state: {P_UPPER}_STATE_SIZE floats, the recurrent state (zeros at the start of a flight; they may
 *          be the same buffer). Unused, and may be NULL, when {P_UPPER}_STATE_SIZE is 0.
 * Call it at {P_UPPER}_CONTROL_HZ. Needs <math.h> (tanhf{', expf' if net['gru'] is not None else ''}) and nothing else.
 *
 * tasks {values['tasks']}, profile {values['profile'].get('name')}, sim git revision {values['sim_git_revision']},
 * {values['training_steps']} training steps, checkpoint sha256 {values['checkpoint_sha256']}
 */
#ifndef {P_UPPER}_H
#define {P_UPPER}_H
#include <math.h>

#define {P_UPPER}_OBS_LAYOUT_VERSION {values['obs_layout_version']}
#define {P_UPPER}_OBS_SIZE {obs_size}
#define {P_UPPER}_ACTION_SIZE {action_size}
#define {P_UPPER}_STATE_SIZE {state_size}
#define {P_UPPER}_CONTROL_HZ {float(values['control_hz'])!r}f
#define {P_UPPER}_ACTION_MODE "{values['action_mode']}"
#define {P_UPPER}_HOVER_INDEX {net['hover_index']}
#define {P_UPPER}_MAX_WIDTH {max(widths)}
{gru_defines}
{''.join(arrays)}{_DENSE}{'' if net['gru'] is None else _GRU}
static inline void {P}_forward(const float *obs, const float *state, float *action, float *next_state) {{
    float a[{P_UPPER}_MAX_WIDTH], b[{P_UPPER}_MAX_WIDTH];
    (void)state;
    (void)next_state;
    for (int i = 0; i < {P_UPPER}_OBS_SIZE; i++) {{
        float v = (obs[i] - {P}_obs_mean[i]) / {P}_obs_std[i];
        a[i] = v < -10.f ? -10.f : (v > 10.f ? 10.f : v);
    }}
{chr(10).join(calls)}
    for (int k = 0; k < {P_UPPER}_ACTION_SIZE; k++) {{
        float v = {y}[k] + obs[{P_UPPER}_HOVER_INDEX] * {P}_hover_prior[k];
        action[k] = v < -1.f ? -1.f : (v > 1.f ? 1.f : v);
    }}
}}

#endif /* {P_UPPER}_H */
"""


# ------------------------------------------------------------------------------------------
# Compiling a header into a shared library (parity checks, tests, benchmark)
# ------------------------------------------------------------------------------------------
_WRAPPER = f"""#define _POSIX_C_SOURCE 199309L
#include <time.h>
#include "{{header}}"

/* every macro of the header, so that compiling this checks them */
const int obs_layout_version = {P_UPPER}_OBS_LAYOUT_VERSION, obs_size = {P_UPPER}_OBS_SIZE;
const int action_size = {P_UPPER}_ACTION_SIZE, state_size = {P_UPPER}_STATE_SIZE;
const float control_hz = {P_UPPER}_CONTROL_HZ;
const char *action_mode = {P_UPPER}_ACTION_MODE;

void batch_forward(const float *obs, const float *state, float *action, float *next_state, int n) {{
    for (int i = 0; i < n; i++)
        {P}_forward(obs + i * {P_UPPER}_OBS_SIZE, state ? state + i * {P_UPPER}_STATE_SIZE : 0,
                    action + i * {P_UPPER}_ACTION_SIZE, next_state ? next_state + i * {P_UPPER}_STATE_SIZE : 0);
}}

/* ns[k]: the time of call k of the forward function on one observation, state carried along */
void time_forward(const float *obs, int iters, double *ns) {{
    float action[{P_UPPER}_ACTION_SIZE], state[{P_UPPER}_STATE_SIZE + 1] = {{0}};
    volatile float sink = 0.f;
    struct timespec t0, t1;
    for (int k = 0; k < iters; k++) {{
        clock_gettime(CLOCK_MONOTONIC, &t0);
        {P}_forward(obs, state, action, state);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        ns[k] = (double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec);
        sink += action[0];
    }}
}}
"""


def find_compiler() -> str:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise CompilerNotFound("no C compiler found (tried $CC, cc, gcc, clang): install one (e.g. apt install gcc)")


class CPolicy:
    """A compiled C export, called through ctypes."""

    def __init__(self, library: str):
        self.lib = ctypes.CDLL(library)
        self.lib.batch_forward.restype = self.lib.time_forward.restype = None

    @staticmethod
    def _ptr(a):
        return None if a is None else a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))

    def step(self, obs, state=None):
        """(action, next_state) for obs [n, OBS_SIZE]: the same signature as export.torch_step's."""
        obs = np.ascontiguousarray(obs, np.float32)
        action = np.empty((obs.shape[0], 4), np.float32)
        next_state = None if state is None else np.empty_like(np.ascontiguousarray(state, np.float32))
        state = None if state is None else np.ascontiguousarray(state, np.float32)
        self.lib.batch_forward(self._ptr(obs), self._ptr(state), self._ptr(action), self._ptr(next_state),
                               ctypes.c_int(obs.shape[0]))
        return action, next_state

    def time(self, obs, iterations: int) -> np.ndarray:
        """Nanoseconds per call, timed inside C, for one observation."""
        obs = np.ascontiguousarray(obs, np.float32).reshape(-1)
        ns = np.empty(iterations, np.float64)
        self.lib.time_forward(self._ptr(obs), ctypes.c_int(iterations), ns.ctypes.data_as(ctypes.POINTER(ctypes.c_double)))
        return ns


def compile_header(header: str, workdir: str) -> CPolicy:
    """Compiles `header` (C99, strict warnings as errors, -O2) into a shared library in `workdir` and loads it."""
    wrapper = os.path.join(workdir, "skyloop_policy_wrapper.c")
    library = os.path.join(workdir, "skyloop_policy_wrapper.so")
    with open(wrapper, "w", encoding="utf-8") as f:
        f.write(_WRAPPER.replace("{header}", os.path.abspath(header)))
    cmd = [find_compiler(), "-std=c99", "-pedantic", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC",
           "-o", library, wrapper, "-lm"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise ExportError(f"the C export {header} does not compile ({' '.join(cmd)}):\n{done.stderr[-2000:]}")
    return CPolicy(library)


def export_c(checkpoint: str, output: str, samples: int = 2048, seed: int = 0, tolerance: float = 1e-5) -> dict:
    """Writes the C header and, where a C compiler exists, checks it against PyTorch on sim rollouts."""
    policy, ckpt = load(checkpoint)
    values = contract_values(policy, ckpt, checkpoint)
    text = c_source(network(policy), values, os.path.basename(checkpoint), os.path.basename(output))
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        header = os.path.join(tmp, os.path.basename(output))
        with open(header, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            compiled = compile_header(header, tmp)
        except CompilerNotFound as exc:
            log.warning("%s; the C export is written WITHOUT its parity check", exc)
        else:
            log.info("parity check: flying the policy in the sim for %d observations", samples)
            data = rollout(torch_step(policy), ckpt, values["state_size"], samples, seed)
            values["parity_max_abs_error"] = check_parity("the C export", replay(compiled.step, data, values["state_size"]),
                                                          data, tolerance)
            values["parity_samples"] = int(data.actions.shape[0] * data.actions.shape[1])
            log.info("parity: C matches PyTorch on %d observations, max |diff| %.2g", values["parity_samples"],
                     values["parity_max_abs_error"])
        shutil.copyfile(header, output)
    return values
