"""Thin binding over the C core (sim/c/skyloop.h and the files it includes, compiled by sim/build_ffi.py).

Everything about layout comes from C: the observation layout, the action size, the parameter
field names with their valid ranges, and the per-drone arrays. The arrays of an environment are
NumPy views of C memory: `step()` writes into them in place, nothing is copied per step.
"""
from __future__ import annotations

import logging
import math

import numpy as np

try:
    from sim._skyloop_c import ffi, lib
except ImportError as exc:  # pragma: no cover - only when the install step was skipped
    raise ImportError(
        "the Skyloop C core is not compiled. Install the project with the README's install command "
        "(it compiles sim/c/skyloop.h), or run: pip install --no-deps --no-build-isolation -e ."
    ) from exc

log = logging.getLogger(__name__)

OBS_SIZE: int = lib.SL_OBS_SIZE
OBS_LAYOUT_VERSION: int = lib.SL_OBS_LAYOUT_VERSION
ACTION_SIZE: int = lib.SL_ACTION_SIZE
ACTION_HISTORY: int = lib.SL_ACTION_HISTORY
ACTION_MODES = {"motor": lib.SL_ACTION_MOTOR, "ctbr": lib.SL_ACTION_CTBR}
#: The tasks, in the C core's order (task ids index this list).
TASKS: list[str] = [ffi.string(lib.sl_task_name(k)).decode() for k in range(lib.SL_N_TASKS)]
#: what ended a crashed episode (the record's crash_cause indexes it; 0 "none": no crash), sim/c/env.h
CRASH_CAUSES: list[str] = [ffi.string(lib.sl_crash_cause_name(k)).decode() for k in range(lib.SL_N_CRASH_CAUSES)]
OBS_GATES: int = lib.SL_OBS_GATES              # next gates in an observation
OBS_OBSTACLES: int = lib.SL_OBS_OBSTACLES      # nearest obstacles in an observation
GATE_FLOATS: int = lib.SL_GATE_FLOATS          # a gate: centre xyz, normal xyz, half width, half height
MAX_GATES: int = lib.SL_MAX_GATES
#: standard gravity as the C core uses it (float32 9.80665): the one value every part reads
GRAVITY_M_S2: float = float(lib.SL_GRAVITY_M_S2)
#: where the numbers of a gate record sit: centre xyz, unit normal xyz (direction of flight), half width, half height
GATE_CENTRE, GATE_NORMAL = slice(lib.SL_GATE_CENTRE, lib.SL_GATE_CENTRE + 3), slice(lib.SL_GATE_NORMAL, lib.SL_GATE_NORMAL + 3)
GATE_HALF_WIDTH, GATE_HALF_HEIGHT = lib.SL_GATE_HALF_WIDTH, lib.SL_GATE_HALF_HEIGHT


class SimError(ValueError):
    """Invalid input to the simulator (a parameter, an action, an action mode)."""


def _table(getter):
    n = ffi.new("int *")
    rows = getter(n)
    return [rows[k] for k in range(n[0])]


def _field_table(getter):
    """{name: (offset_bytes, count, lo, hi, doc)} for one of the C parameter structs."""
    return {
        ffi.string(r.name).decode(): (r.offset, r.count, r.lo, r.hi, ffi.string(r.doc).decode())
        for r in _table(getter)
    }


PARAM_FIELDS = _field_table(lib.sl_param_fields)
RANDOMIZATION_FIELDS = _field_table(lib.sl_randomization_fields)
TASK_FIELDS = _field_table(lib.sl_task_fields)


def _read_struct(cdata, fields) -> dict:
    """{field: number or list} of a C struct, floats shown with float32's 7 significant digits."""
    base = ffi.cast("char *", cdata)
    out = {}
    for name, (offset, count, _lo, _hi, _doc) in fields.items():
        src = ffi.cast("float *", base + offset)
        vals = [float(f"{src[k]:.7g}") for k in range(count)]
        out[name] = vals if count > 1 else vals[0]
    return out


def task_defaults() -> dict:
    """The default task configuration, every field of SlTaskConfig, as the C core defines it."""
    t = ffi.new("SlTaskConfig *")
    lib.sl_task_defaults(t)
    return _read_struct(t, TASK_FIELDS)
_STRUCTS = {"params": ("SlParams", PARAM_FIELDS), "randomization": ("SlRandomization", RANDOMIZATION_FIELDS),
            "task": ("SlTaskConfig", TASK_FIELDS)}

#: Ordered observation fields: [(name, offset, count)], as the C observation function writes them.
OBS_FIELDS = [(ffi.string(r.name).decode(), r.offset, r.count) for r in _table(lib.sl_obs_fields)]
#: Per-drone arrays of an environment: {name: width}.
DRONE_FIELDS = {ffi.string(r.name).decode(): r.width for r in _table(lib.sl_drone_fields)}
_DRONE_ROWS = {ffi.string(r.name).decode(): r.row for r in _table(lib.sl_drone_fields)}


def obs_slice(name: str) -> slice:
    """Where observation field `name` sits in an observation vector."""
    for field, offset, count in OBS_FIELDS:
        if field == name:
            return slice(offset, offset + count)
    raise KeyError(f"no observation field {name!r}; fields: {[f for f, _, _ in OBS_FIELDS]}")


def make_struct(kind: str, values: dict):
    """A C struct ('params', 'randomization' or 'task') filled from {field: number or list}.

    Every field must be given; values are range-checked by the C side when an env is made.
    """
    ctype, fields = _STRUCTS[kind]
    missing = sorted(set(fields) - set(values))
    unknown = sorted(set(values) - set(fields))
    if missing or unknown:
        raise SimError(f"{kind}: missing fields {missing}, unknown fields {unknown}")
    cdata = ffi.new(ctype + " *")
    base = ffi.cast("char *", cdata)
    for name, (offset, count, _lo, _hi, _doc) in fields.items():
        vals = np.atleast_1d(np.asarray(values[name], dtype=np.float64))
        if vals.shape != (count,):
            raise SimError(f"{kind}.{name}: expected {count} number(s), got {values[name]!r}")
        dst = ffi.cast("float *", base + offset)
        for k in range(count):
            dst[k] = float(vals[k])
    return cdata


def action_mode_id(mode: str) -> int:
    try:
        return ACTION_MODES[mode]
    except KeyError:
        raise SimError(f"unknown action mode {mode!r}: use one of {sorted(ACTION_MODES)}") from None


def _view(ptr, dtype, shape, owner):
    """A NumPy view of C memory that keeps `owner` (the environment that frees it) alive: an array
    handed out (obs from reset, say) stays valid after the env object itself is dropped."""
    count = int(np.prod(shape))
    ptr = ffi.gc(ptr, lambda _ptr, _owner=owner: None)     # the destructor's closure holds the owner
    buf = ffi.buffer(ptr, count * np.dtype(dtype).itemsize)
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


class CoreEnv:
    """N drones in C memory. Attributes are NumPy views into it (no copies):

    obs [n, OBS_SIZE], actions [n, 4], rewards [n], terminals [n], truncations [n], final_obs [n, OBS_SIZE],
    and `drone[name]`, a [width, n] view of each per-drone array (state, true parameters, task,
    last-episode records): see DRONE_FIELDS; and per shared space: gates [spaces, MAX_GATES,
    GATE_FLOATS] with n_gates, obstacles [spaces, MAX_OBSTACLES, 4] with n_obstacles, formation slots.
    """

    def __init__(self, n: int, params: dict, randomization: dict, task: dict, action_mode: str = "motor"):
        self.action_mode = action_mode
        mode = action_mode_id(action_mode)
        p, r, t = make_struct("params", params), make_struct("randomization", randomization), make_struct("task", task)
        err = ffi.new("char[512]")
        env = lib.sl_env_new(int(n), p, r, t, mode, err, 512)
        if env == ffi.NULL:
            raise SimError(ffi.string(err).decode())
        self._env = ffi.gc(env, lib.sl_env_free)
        self.n = n
        n_pad = env.n_pad
        self.substeps = env.substeps
        self.physics_dt_s = env.dt_s
        self.control_dt_s = env.control_dt_s
        self.obs = _view(env.obs, np.float32, (n_pad, OBS_SIZE), self._env)[:n]
        self.final_obs = _view(env.final_obs, np.float32, (n_pad, OBS_SIZE), self._env)[:n]
        self.actions = _view(env.actions, np.float32, (n_pad, ACTION_SIZE), self._env)[:n]
        self.rewards = _view(env.rewards, np.float32, (n_pad,), self._env)[:n]
        self.terminals = _view(env.terminals, np.bool_, (n_pad,), self._env)[:n]
        self.truncations = _view(env.truncations, np.bool_, (n_pad,), self._env)[:n]
        block = _view(env.f, np.float32, (lib.SL_N_ROWS, n_pad), self._env)
        self.drone = {name: block[_DRONE_ROWS[name]:_DRONE_ROWS[name] + width, :n]
                      for name, width in DRONE_FIELDS.items()}
        # the shared spaces (drone i flies in space i // space_size): gates, spheres, formation slots
        self.space_size, self.n_spaces = env.space_size, env.n_spaces
        ns = self.n_spaces
        self.gates = _view(env.gates, np.float32, (ns, lib.SL_MAX_GATES, GATE_FLOATS), self._env)
        self.n_gates = _view(env.n_gates, np.int32, (ns,), self._env)
        self.obstacles = _view(env.obstacles, np.float32, (ns, lib.SL_MAX_OBSTACLES, 4), self._env)
        self.n_obstacles = _view(env.n_obstacles, np.int32, (ns,), self._env)
        self.formation = _view(env.formation, np.float32, (ns, self.space_size, 3), self._env)

    @property
    def bytes_allocated(self) -> int:
        """Memory the C side allocated for this environment (every array, padding and shared spaces)."""
        return int(lib.sl_env_bytes(self._env))

    @property
    def substeps_integrated(self) -> int:
        """RK4 substeps of real drones the C kernels integrated since this environment was made."""
        return int(lib.sl_env_substeps_integrated(self._env))

    def use_reference(self, on: bool = True) -> None:
        """Step the physics with the scalar reference (drone by drone) instead of the vector kernel;
        both give the same numbers bit for bit (for tests)."""
        lib.sl_env_set_reference(self._env, int(bool(on)))

    def reset(self, seed: int = 0) -> None:
        lib.sl_env_reset(self._env, int(seed) & 0xFFFFFFFFFFFFFFFF)

    def set_course(self, gates) -> None:
        """The course every race flies from the next reset: gates [n, GATE_FLOATS] in the env's
        frame (centre, unit normal, half width, half height); an empty array: random courses."""
        g = np.ascontiguousarray(gates, dtype=np.float32).reshape(-1, GATE_FLOATS)
        err = ffi.new("char[512]")
        if lib.sl_env_set_course(self._env, len(g), ffi.from_buffer("float[]", g), err, 512):
            raise SimError(ffi.string(err).decode())

    def set_task(self, task: dict) -> None:
        """The task for episodes drawn from now on (the time step, control rate and drones per space
        are fixed for the env's life). Raises SimError naming the field on a refusal."""
        err = ffi.new("char[512]")
        if lib.sl_env_set_task(self._env, make_struct("task", task), err, 512):
            raise SimError(ffi.string(err).decode())

    def _check(self, bad: int) -> None:
        if bad:
            drone, component = divmod(bad - 1, ACTION_SIZE)
            value = float(self.actions[drone, component])
            raise SimError(
                f"action[{drone}, {component}] = {value!r} is not a number in [-1, 1]; "
                "squash or clip the policy's output (nothing was stepped)"
            )

    def step(self) -> None:
        """One agent step with the task (rewards, terminations, automatic resets). Reads self.actions."""
        bad = lib.sl_env_step(self._env)
        if bad < 0:
            raise MemoryError("the simulator ran out of memory sensing the shared spaces")
        self._check(bad)

    def step_physics(self) -> None:
        """One control step of physics only (no task, no reset): for replaying commands."""
        self._check(lib.sl_env_step_physics(self._env))

    def sync(self, i: int, held_action=None) -> None:
        """Call after writing drone i's state or parameters through `drone[...]`: the command
        history is refilled as if the current rotor speeds had been commanded all along, by
        `held_action` (default: the drone's hover action)."""
        if not 0 <= i < self.n:
            raise IndexError(f"drone {i} is outside 0..{self.n - 1}")
        if held_action is None:
            hover = float(self.drone["hover_action"][0, i])
            held_action = [hover, 0.0, 0.0, 0.0] if self.action_mode == "ctbr" else [hover] * 4
        held = ffi.new("float[4]", [float(x) for x in held_action])
        lib.sl_env_sync_drone(self._env, int(i), held)


def build_target() -> dict:
    """What the compiled core targets: {"isa": "x86-64 AVX2 + FMA", "vector_bytes": 32, "lanes": 8}
    (from the compiler's macros when it was built)."""
    width = ffi.new("int *")
    isa = ffi.string(lib.sl_build_target(width)).decode()
    return {"isa": isa, "vector_bytes": width[0], "lanes": width[0] // 4}


def motor_response(params: dict, throttle, dt_s: float, v_frac: float = 1.0, omega0_rad_s: float = 0.0) -> np.ndarray:
    """Rotor speed [rad/s] of one motor of a profile driven by `throttle` (0..1, one value per dt_s):
    the sim's own motor model (throttle curve, battery ratio, delay, up/down lag), as on a stand."""
    u = np.ascontiguousarray(throttle, dtype=np.float32).reshape(-1)
    if not np.all(np.isfinite(u)):
        raise SimError("motor_response: throttle must be finite numbers in [0, 1]")
    if not dt_s > 0:
        raise SimError(f"motor_response: dt_s must be positive, got {dt_s}")
    p = make_struct("params", params)
    out = np.empty_like(u)
    lib.sl_motor_response(p, ffi.from_buffer("float[]", u), len(u), float(dt_s), float(v_frac), float(omega0_rad_s),
                          ffi.from_buffer("float[]", out))
    return out


def omega_to_throttle(curve, omega_rad_s) -> np.ndarray:
    """The inverse of a throttle curve omega = c0 + c1 u + c2 u^2 (a profile's throttle_to_omega_rad_s,
    the drone's nom_curve): the throttle u that gives these rotor speeds (the rising root), clipped to
    0..1. The one inverse: the simulated vehicle, the MSP link and the sim-vs-real replay use it."""
    c = np.ascontiguousarray(curve, dtype=np.float32).reshape(-1)
    if c.shape != (3,):
        raise SimError(f"omega_to_throttle: a throttle curve has 3 coefficients, got {np.shape(curve)}")
    w = np.asarray(omega_rad_s, dtype=np.float64)
    flat = np.ascontiguousarray(w, dtype=np.float32).reshape(-1)
    u = np.empty_like(flat)
    lib.sl_throttle_for_omega_n(ffi.from_buffer("float[]", c), ffi.from_buffer("float[]", flat), len(flat),
                                ffi.from_buffer("float[]", u))    # the C core's own inverse (sim/c/physics.h)
    out = u.astype(np.float64).reshape(w.shape)
    return out if out.ndim else out[()]


def neighbors(pos, radius, sense_m: float, use_grid: bool = True):
    """Drone-drone contacts and neighbours of n drones (the sim's own check): positions [n, 3],
    radii [n]. Returns (collided [n] bool, nearest [n, OBS_OBSTACLES] ids, -1 for none, and
    their surface distances). use_grid=False checks all pairs (the reference)."""
    p = np.ascontiguousarray(pos, dtype=np.float32).reshape(-1, 3)
    r = np.ascontiguousarray(radius, dtype=np.float32).reshape(-1)
    if len(r) != len(p):
        raise SimError(f"neighbors: {len(p)} positions but {len(r)} radii")
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(r)) and np.all(r >= 0) and math.isfinite(sense_m) and sense_m >= 0):
        raise SimError("neighbors: positions, radii and sense_m must be finite numbers (radii and sense_m >= 0); "
                       "drop or fix the drones whose state is not finite")
    hit = np.zeros(len(p), np.uint8)
    ids = np.zeros((len(p), OBS_OBSTACLES), np.int32)
    dist = np.zeros((len(p), OBS_OBSTACLES), np.float32)
    if lib.sl_neighbors(len(p), ffi.from_buffer("float[]", p), ffi.from_buffer("float[]", r), float(sense_m),
                        int(use_grid), ffi.from_buffer("uint8_t[]", hit), ffi.from_buffer("int[]", ids),
                        ffi.from_buffer("float[]", dist)):
        raise MemoryError("neighbors: out of memory")
    return hit.astype(bool), ids, dist


def gate_check(gate, p0_enu_m, p1_enu_m, radius_m: float, frame_m: float) -> int:
    """The sim's gate rule for the path p0 -> p1 of a drone of radius_m: +1 passed through the
    opening in the flight direction, -1 through the opening backwards, -2 hit the frame, 0 neither
    (a race crashes on -2 at any gate, on -1 only at its next gate)."""
    g, a, b = (np.ascontiguousarray(x, dtype=np.float32).reshape(-1) for x in (gate, p0_enu_m, p1_enu_m))
    if g.shape != (GATE_FLOATS,) or a.shape != (3,) or b.shape != (3,):
        raise SimError(f"gate_check: a gate has {GATE_FLOATS} numbers and points 3")
    return int(lib.sl_gate_check(ffi.from_buffer("float[]", g), ffi.from_buffer("float[]", a),
                                 ffi.from_buffer("float[]", b), float(radius_m), float(frame_m)))


def observe(pos_enu_m, vel_enu_m_s, quat_wxyz, omega_flu_rad_s, target_enu_m, last_actions, hover_action,
            target_vel_enu_m_s=(0.0, 0.0, 0.0), gates=None, obstacles=None) -> np.ndarray:
    """One observation from a vehicle's state, built by the same C function as the sim's.

    gates: the next gates to pass, [k, GATE_FLOATS] world ENU (at most OBS_GATES are used);
    obstacles: the nearest obstacles, [m, 4] centre ENU + radius, nearest first (at most
    OBS_OBSTACLES). Absent ones are observed as empty slots, as in the sim's other tasks."""
    def arr(x, n, name):
        a = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
        if a.shape != (n,):
            raise SimError(f"{name}: expected {n} numbers, got shape {np.shape(x)}")
        return a
    args = [arr(pos_enu_m, 3, "pos_enu_m"), arr(vel_enu_m_s, 3, "vel_enu_m_s"), arr(quat_wxyz, 4, "quat_wxyz"),
            arr(omega_flu_rad_s, 3, "omega_flu_rad_s"), arr(target_enu_m, 3, "target_enu_m"),
            arr(last_actions, ACTION_HISTORY * ACTION_SIZE, "last_actions")]
    g = np.ascontiguousarray(np.zeros((0, GATE_FLOATS)) if gates is None else gates, np.float32).reshape(-1, GATE_FLOATS)
    o = np.ascontiguousarray(np.zeros((0, 4)) if obstacles is None else obstacles, np.float32).reshape(-1, 4)
    g, o = g[:OBS_GATES].copy(), o[:OBS_OBSTACLES].copy()
    out = np.empty(OBS_SIZE, dtype=np.float32)
    ptrs = [ffi.from_buffer("float[]", a) for a in args]
    tv = arr(target_vel_enu_m_s, 3, "target_vel_enu_m_s")
    lib.sl_observe_state(*ptrs, float(hover_action), ffi.from_buffer("float[]", tv),
                         ffi.from_buffer("float[]", g if len(g) else np.zeros(GATE_FLOATS, np.float32)), len(g),
                         ffi.from_buffer("float[]", o if len(o) else np.zeros(4, np.float32)), len(o),
                         ffi.from_buffer("float[]", out))
    return out
