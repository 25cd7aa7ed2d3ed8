"""The ghost: what the sim thinks the drone will do. The sim, started from the drone's current
state with the same policy in the loop (the same observation function, the same target rule),
flies the next second; the path it flies is the prediction the flight view draws and scores.

    ghost = Ghost(policy, profile, course)                 # one prediction at a time, any process
    path_enu_m = ghost.predict(start)                      # [steps + 1, 3], one row per control step

    with GhostProcess(policy_path, profile, course) as g:  # the same, in a process of its own
        g.request(start)                                   # never blocks: False while busy
        result = g.poll()                                  # the newest finished prediction, or None

`start` is one control tick as the runner saw it (flight/view.py builds it): the telemetry state,
the target, the policy's last actions (before this tick's), the battery voltage, the next gate
and race mode's climb point (a course) or the goal and speed (teleop's moving target). The drone
flown is the profile's nominal one; rotor speeds start at the reported ones (ESC telemetry) or at
hover.

The control loop never waits for the ghost: predictions run in their own process, at a lower
priority (nice), and a new one is asked for only when the last one has come back.
"""
from __future__ import annotations

import logging
import multiprocessing

import numpy as np

from flight.course import Course, CourseProgress
from flight.realtime import lower_priority
from flight.service import Service, stop_child
from sim.core import ACTION_SIZE, OBS_GATES, observe
from sim.env import DroneEnv
from sim.profiles import Profile

log = logging.getLogger(__name__)
RAD_S_PER_RPM = 2.0 * np.pi / 60.0


class Ghost:
    """One predictor: a single nominal drone in the sim, the policy, a copy of the target rule."""

    def __init__(self, policy, profile: Profile, course: Course | None = None, *, lookahead_m: float = 1.5,
                 race: bool = False, horizon_s: float = 1.0):
        self.policy = policy
        self.env = DroneEnv(1, profile.nominal(), action_mode=policy.action_mode, randomize=False,
                            task={"bounds_m": [1e4, 1e4, 1e4], "episode_s": 1e5})
        self.env.reset(seed=0)
        self.hover_action = float(self.env.core.drone["hover_action"][0, 0])
        self.battery_v_nominal = float(self.env.core.drone["battery_v"][0, 0])
        self.dt_s = 1.0 / float(policy.control_hz)
        self.steps = max(1, int(round(horizon_s / self.dt_s)))
        self.progress = CourseProgress(course, lookahead_m, race=race) if course is not None and course.gates else None

    def predict(self, start: dict) -> np.ndarray:
        """The positions [steps + 1, 3] (ENU m) of the sim's drone, one per control step from `start`."""
        s = start["state"]
        rpm = s.get("rpm")
        rotor = np.asarray(rpm, float) * RAD_S_PER_RPM if rpm is not None else None
        if rotor is None or rotor.shape != (4,) or not np.all(np.isfinite(rotor)):
            rotor = None
        placed = {"pos_enu_m": s["pos_enu_m"], "vel_enu_m_s": s["vel_enu_m_s"], "quat_wxyz": s["quat_wxyz"],
                  "omega_flu_rad_s": s["omega_flu_rad_s"]}
        if rotor is not None:
            placed["rotor_rad_s"] = rotor
        self.env.set_state(0, **placed)
        # the voltage the vehicle reports caps the rotor speed, as in the sim (a sagging pack, a racer at full thrust)
        battery_v = start.get("battery_v")
        d = self.env.core.drone
        d["battery_v"][0, 0] = battery_v if battery_v is not None and 0.0 < battery_v < 1e3 else self.battery_v_nominal
        last_actions = np.asarray(start["last_actions"], np.float32).copy()
        self.env.core.sync(0, last_actions[:ACTION_SIZE])   # the delay line holds the last command
        progress = self.progress if start.get("next_gate") is not None else None
        if progress is not None:
            progress.next_gate, progress._last_pos = int(start["next_gate"]), np.asarray(s["pos_enu_m"], float)
            climb_to = start.get("climb_to_enu_m")             # race mode's take-off climb, as the runner has it
            progress.climbing = climb_to is not None
            progress.climb_to_enu_m = None if climb_to is None else np.asarray(climb_to, float)
        target = np.asarray(start["target_enu_m"], float)
        goal, speed = start.get("goal_enu_m"), start.get("speed_m_s")
        policy_state = self.policy.initial_state(1)
        path = np.empty((self.steps + 1, 3))
        path[0] = s["pos_enu_m"]
        pos, vel = np.asarray(s["pos_enu_m"], float), np.asarray(s["vel_enu_m_s"], float)
        quat, omega = np.asarray(s["quat_wxyz"], float), np.asarray(s["omega_flu_rad_s"], float)
        for k in range(self.steps):
            if k > 0:                             # the runner's target rule, from the ghost's own position
                if progress is not None:
                    target = progress.update(pos, k * self.dt_s)
                elif goal is not None and speed:
                    gap = np.asarray(goal, float) - target
                    dist = float(np.linalg.norm(gap))
                    step = float(speed) * self.dt_s
                    target = np.asarray(goal, float) if dist <= step else target + gap * (step / dist)
            gates = progress.next_gates(OBS_GATES) if progress is not None else None
            obs = observe(pos, vel, quat, omega, target, last_actions, self.hover_action, gates=gates)
            action, policy_state = self.policy.run(obs[None], policy_state)
            action = np.asarray(action[0], np.float32)
            self.env.step_physics(action.reshape(1, ACTION_SIZE))
            last_actions = np.concatenate([action, last_actions[:-ACTION_SIZE]])
            pos, vel = d["pos_enu_m"][:, 0].astype(float), d["vel_enu_m_s"][:, 0].astype(float)
            quat, omega = d["quat_wxyz"][:, 0].astype(float), d["omega_flu_rad_s"][:, 0].astype(float)
            path[k + 1] = pos
        return path


def _serve(conn, config: dict) -> None:
    """The ghost process: answers each request with a prediction until it gets None (or the pipe closes)."""
    lower_priority(10)                            # the control loop, not the ghost, gets the CPU when both want it
    from policy_export import load_policy
    policy = load_policy(config["policy_path"], action_modes=(config["action_mode"],), threads=1)
    ghost = Ghost(policy, config["profile"], config["course"], lookahead_m=config["lookahead_m"],
                  race=config["race"], horizon_s=config["horizon_s"])
    conn.send({"ready": True, "dt_s": ghost.dt_s, "steps": ghost.steps})
    while True:
        try:
            start = conn.recv()
        except (EOFError, OSError):
            return
        if start is None:
            return
        try:
            conn.send({"t_s": start["t_s"], "path_enu_m": ghost.predict(start)})
        except Exception as exc:                  # a bad start (NaN telemetry): say so, keep serving
            conn.send({"t_s": start["t_s"], "error": f"{type(exc).__name__}: {exc}"})


class GhostProcess(Service):
    """Ghost predictions in a process of their own (spawned: nothing of the runner's threads comes along)."""

    def __init__(self, policy_path: str, profile: Profile, course: Course | None, action_mode: str, *,
                 lookahead_m: float = 1.5, race: bool = False, horizon_s: float = 1.0):
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        config = {"policy_path": policy_path, "profile": profile, "course": course, "action_mode": action_mode,
                  "lookahead_m": lookahead_m, "race": race, "horizon_s": horizon_s}
        self._proc = ctx.Process(target=_serve, args=(child, config), daemon=True, name="skyloop-ghost")
        self._child = child
        self.ready = False
        self.busy = True                          # until the process says it is ready
        self.error: str | None = None

    def start(self) -> None:
        self._proc.start()
        self._child.close()

    def request(self, start: dict) -> bool:
        """Asks for a prediction from `start`; False (nothing sent) while the last one is still running."""
        if self.busy or not self._proc.is_alive():
            return False
        self._conn.send(start)
        self.busy = True
        return True

    def poll(self) -> dict | None:
        """The prediction that came back since the last call ({"t_s", "path_enu_m"} or {"t_s", "error"}), or None."""
        try:
            if not self._conn.poll():
                return None
            message = self._conn.recv()
        except (EOFError, OSError):
            self.busy = True
            return None
        self.busy = False
        if message.get("ready"):
            self.ready = True
            return None
        if "error" in message and self.error is None:
            self.error = message["error"]
            log.warning("ghost: %s", message["error"])
        return message

    def stop(self) -> None:
        stop_child(self._proc, lambda: self._conn.send(None), timeout_s=2.0)
        self._conn.close()
