"""The vectorized drone environment: N drones in one C call, as a Gymnasium vector env.

    env = DroneEnv(num_drones=1024, profile="size_family", action_mode="motor")
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(actions)   # actions [N, 4] in [-1, 1]

Episodes reset automatically in the same step (Gymnasium's SAME_STEP autoreset): where an
episode ended, `obs` is already the next episode's first observation; the last observation of
the finished one is in `info["final_obs"]` and its record (success, crash, time to target, final
error, return, drone size) in `info["episode"]`. The returned arrays are views of C memory that
the next step overwrites; copy what you keep.
"""
from __future__ import annotations

import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv

from sim.core import ACTION_SIZE, GATE_FLOATS, OBS_SIZE, TASKS, CoreEnv, SimError, task_defaults
from sim.core import MAX_GATES as MAX_GATES_ENV
from sim.profiles import Profile, load_profile

#: The tasks, their mix and the time step: every field of the C struct SlTaskConfig, with the C core's
#: defaults (SL_TASK_DEFAULTS in sim/c/env.h; task_prob in sim.core.TASKS order).
DEFAULT_TASK = task_defaults()

EPISODE_FIELDS = ("return", "length_s", "success", "crash", "time_to_target_s", "final_error_m", "arm_m", "mass_kg",
                  "task", "gates", "collision", "crash_cause")


def parse_tasks(spec: str | dict) -> list[float]:
    """A task mix as task_prob: "hover", "hover,race" (equal shares), "hover:3,race:1" or "all",
    or a dict {task: weight}. Names are the C core's (sim.core.TASKS)."""
    if isinstance(spec, dict):
        weights = dict(spec)
    elif spec.strip() == "all":
        weights = {name: 1.0 for name in TASKS}
    else:
        weights = {}
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            name, _, weight = part.partition(":")
            try:
                weights[name.strip()] = float(weight) if weight else 1.0
            except ValueError:
                raise SimError(f"tasks {spec!r}: {weight!r} is not a number (write e.g. hover:3,race:1)") from None
    unknown = sorted(set(weights) - set(TASKS))
    if unknown or not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise SimError(f"tasks {spec!r}: use names from {TASKS} with non-negative weights, at least one positive "
                       "(e.g. 'hover', 'hover:3,race:1' or 'all')")
    return [float(weights.get(name, 0.0)) for name in TASKS]


def task_config(**overrides) -> dict:
    """DEFAULT_TASK with overrides, every name checked."""
    unknown = sorted(set(overrides) - set(DEFAULT_TASK))
    if unknown:
        raise SimError(f"unknown task fields {unknown}; valid: {sorted(DEFAULT_TASK)}")
    task = dict(DEFAULT_TASK)
    task.update(overrides)
    return task


class DroneEnv(VectorEnv):
    """N quadrotors (one per sub-environment) flying the task mix of `task["task_prob"]` (default:
    hover / go-to only). `course` (a skyloop.course.Course or a course name / path) makes every
    race fly that course, in a box centred on it (see `course_task`)."""

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(self, num_drones: int = 1024, profile: str | Profile = "size_family", action_mode: str = "motor",
                 task: dict | None = None, randomize: bool = True, seed: int = 0, course=None):
        self.profile = profile if isinstance(profile, Profile) else load_profile(profile)
        if not randomize:
            self.profile = self.profile.nominal()
        self.task = task_config(**(task or {}))
        #: where the env's box sits in the course's frame (courses are shifted to the box's centre)
        self.course_offset_enu_m = np.zeros(3)
        if course is not None:
            self.task, self.course_offset_enu_m, gates = course_task(course, self.task)
        self.core = CoreEnv(num_drones, self.profile.params, self.profile.randomization, self.task, action_mode)
        if course is not None:
            self.core.set_course(gates)
        self.num_envs = num_drones
        self.action_mode = action_mode
        self.control_hz = float(self.task["control_hz"])
        self.single_observation_space = spaces.Box(-np.inf, np.inf, (OBS_SIZE,), np.float32)
        self.single_action_space = spaces.Box(-1.0, 1.0, (ACTION_SIZE,), np.float32)
        self.observation_space = spaces.Box(-np.inf, np.inf, (num_drones, OBS_SIZE), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (num_drones, ACTION_SIZE), np.float32)
        self._seed = seed

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._seed = int(seed)
        self.core.reset(self._seed)
        return self.core.obs, {}

    def step(self, actions):
        if actions is not self.core.actions:
            actions = np.asarray(actions)
            if actions.shape != (self.num_envs, ACTION_SIZE):
                raise SimError(f"actions must have shape ({self.num_envs}, {ACTION_SIZE}), got {actions.shape}")
            self.core.actions[:] = actions
        self.core.step()
        c = self.core
        info = {}
        done = c.terminals | c.truncations
        if done.any():
            idx = np.flatnonzero(done)
            d = c.drone
            info["final_obs"] = c.final_obs
            info["done_index"] = idx
            info["episode"] = {
                "return": d["last_return"][0, idx].copy(), "length_s": d["last_length_s"][0, idx].copy(),
                "success": d["last_success"][0, idx] > 0, "crash": d["last_crash"][0, idx] > 0,
                "time_to_target_s": d["last_time_to_target_s"][0, idx].copy(),
                "final_error_m": d["last_final_error_m"][0, idx].copy(),
                "arm_m": d["last_arm_m"][0, idx].copy(), "mass_kg": d["last_mass_kg"][0, idx].copy(),
                "task": d["last_task"][0, idx].astype(int), "gates": d["last_gates"][0, idx].astype(int),
                "collision": d["last_collision"][0, idx] > 0,
                "crash_cause": d["last_crash_cause"][0, idx].astype(int),   # sim.core.CRASH_CAUSES
            }
        return c.obs, c.rewards, c.terminals, c.truncations, info

    def set_task(self, **overrides) -> None:
        """Changes task fields (names checked) for the episodes drawn from now on; the running ones
        fly on as they began. The time step, control rate and drones per space cannot change (the C
        core refuses them, naming the field). Used by the curriculum (sim/curriculum.py)."""
        task = task_config(**{**self.task, **overrides})
        self.core.set_task(task)
        self.task = task

    # --- direct access, for replaying real flights and for tests ---------------------------
    def state(self, i: int) -> dict:
        """Drone i's state (copies): pos_enu_m, vel_enu_m_s, quat_wxyz, omega_flu_rad_s, rotor_rad_s."""
        d = self.core.drone
        return {k: d[k][:, i].copy() for k in ("pos_enu_m", "vel_enu_m_s", "quat_wxyz", "omega_flu_rad_s", "rotor_rad_s")}

    def set_state(self, i: int, **state) -> None:
        """Sets drone i's state (any of the names of `state()`, plus target_enu_m); the motor
        delay line is refilled as if the given rotor speeds had been commanded all along. A new
        target alone changes nothing else; observations show it from the next step."""
        d = self.core.drone
        allowed = ("pos_enu_m", "vel_enu_m_s", "quat_wxyz", "omega_flu_rad_s", "rotor_rad_s", "target_enu_m")
        for name, value in state.items():
            if name not in allowed:
                raise SimError(f"set_state: unknown field {name!r}; use {allowed}")
            value = np.asarray(value, dtype=np.float32).reshape(-1)
            if value.shape != (d[name].shape[0],) or not np.all(np.isfinite(value)):
                raise SimError(f"set_state: {name} needs {d[name].shape[0]} finite numbers, got {value}")
            d[name][:, i] = value
        if set(state) - {"target_enu_m"}:   # a new target alone leaves the motors and their history alone
            self.core.sync(i)

    def step_physics(self, actions) -> np.ndarray:
        """Advances all drones one control step with these actions, without the task (no reward,
        termination or reset). Returns the observations."""
        self.core.actions[:] = np.asarray(actions, dtype=np.float32).reshape(self.num_envs, ACTION_SIZE)
        self.core.step_physics()
        return self.core.obs

    def close(self, **kwargs):
        pass


def course_task(course, task: dict) -> tuple[dict, np.ndarray, np.ndarray]:
    """A course (skyloop.course.Course or its JSON name/path) as the env's race: the task with the
    course's box and laps, the offset of the box's centre in the course frame, and the gates
    [n, GATE_FLOATS] in the env's frame (the env's box is centred on x and y, floor at z = 0)."""
    from skyloop.course import Course, load_course     # the base layer: the flight runner flies the same courses
    if not isinstance(course, Course):
        course = load_course(course)
    if len(course.gates) > MAX_GATES_ENV:
        raise SimError(f"course {course.name}: {len(course.gates)} gates; the sim flies at most {MAX_GATES_ENV}")
    lo, hi = course.bounds_min_enu_m, course.bounds_max_enu_m
    offset = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]])
    gates = np.zeros((len(course.gates), GATE_FLOATS), np.float32)
    for k, g in enumerate(course.gates):
        gates[k, :3] = g.centre_enu_m - offset
        gates[k, 3:6] = g.normal_enu
        gates[k, 6:8] = (g.width_m / 2, g.height_m / 2)
    task = dict(task, bounds_m=[float((hi[0] - lo[0]) / 2), float((hi[1] - lo[1]) / 2), float(hi[2] - lo[2])],
                race_laps=float(course.laps))
    return task, offset, gates
