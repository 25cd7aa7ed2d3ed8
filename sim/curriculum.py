"""A curriculum driven by measured success: each task that has one starts easy and is made harder
(one stage at a time) once the trainer measures it succeeding often enough.

    skyloop train --train.tasks all --train.curriculum success              # every task with stages
    skyloop train --train.tasks all --train.curriculum success:obstacles    # only these (comma list)

The trainer (sim/train.py) calls `update(success_per_task, steps)` after every PPO update with the
success rate of its recent episodes per task; a returned dict of task fields goes to
`DroneEnv.set_task` (episodes drawn from then on fly it). `state()` is plain data, saved in the
checkpoint's training stats ("curriculum") and restored with `Curriculum.from_state`.

Stages per task, easiest first; the last stage is the configured task itself (so a curriculum
that reaches its end trains on exactly what it is evaluated on):
- race: fewer gates, larger openings, shorter hops (random courses; a fixed course has none of these);
- obstacles: the same spheres, first scattered wide of the way to the goal, then closer to it
  (fewer spheres instead leaves the nearest-obstacle slots of the observation unseen until a stage
  fills them, and a policy that never saw them flew into the ground when they did);
- orbit and follow: a slower target.
"""
from __future__ import annotations

import copy

from sim.core import TASKS

#: per task: task-field overrides of each stage but the last (the configured task)
STAGES = {
    "race": [{"gate_count_range": [1.0, 2.0], "gate_size_m": 1.6, "gate_spacing_m_range": [2.5, 4.0]},
             {"gate_count_range": [2.0, 4.0], "gate_size_m": 1.2, "gate_spacing_m_range": [3.0, 5.0]}],
    "obstacles": [{"obstacle_spread_m": 2.0}, {"obstacle_spread_m": 1.4}, {"obstacle_spread_m": 1.0}],
    "orbit": [{"orbit_speed_m_s_range": [0.3, 0.6]}, {"orbit_speed_m_s_range": [0.3, 1.0]}],
    "follow": [{"follow_speed_m_s_max": 0.5}, {"follow_speed_m_s_max": 1.0}],
}
PROMOTE_AT = 0.5          # success rate of the recent training episodes that moves a task to its next stage
MIN_UPDATES = 30          # updates between two changes of one task (the success window refills meanwhile)


class CurriculumError(ValueError):
    """A curriculum mode or saved state that cannot be used; the message says what to write."""


def parse_mode(mode: str) -> tuple[str, ...] | None:
    """The staged tasks a curriculum mode names: "success" (None: every task with stages) or
    "success:race,obstacles" (those). Raises CurriculumError with the choices otherwise."""
    name, _, only = mode.partition(":")
    if name != "success":
        raise CurriculumError(f"curriculum {mode!r} is unknown: use 'success', 'success:TASK,...' "
                              f"(TASK one of {', '.join(STAGES)}) or '' for none")
    if not only:
        return None
    tasks = tuple(t.strip() for t in only.split(","))
    bad = [t for t in tasks if t not in STAGES]
    if bad:
        raise CurriculumError(f"curriculum {mode!r}: {', '.join(bad)} has no stages; "
                              f"tasks with stages: {', '.join(STAGES)}")
    return tasks


class Curriculum:
    def __init__(self, task: dict, promote_at: float = PROMOTE_AT, min_updates: int = MIN_UPDATES,
                 only: tuple[str, ...] | None = None):
        self.promote_at, self.min_updates = float(promote_at), int(min_updates)
        active = [name for name, p in zip(TASKS, task["task_prob"])
                  if p > 0 and name in STAGES and (only is None or name in only)]
        # the configured task's own values of every field a stage changes: the last stage
        self.target = {name: {f: copy.deepcopy(task[f]) for stage in STAGES[name] for f in stage} for name in active}
        self.level = {name: 0 for name in active}
        self.since_change = {name: 0 for name in active}
        self.history: list[list] = []          # [steps, task, new stage]
        self._pending = bool(active)           # the first update sends stage 0 of every task

    @classmethod
    def from_config(cls, mode: str, task: dict) -> "Curriculum":
        return cls(task, only=parse_mode(mode))

    def stages(self, name: str) -> list[dict]:
        return STAGES[name] + [self.target[name]]

    def fields(self) -> dict:
        """The task fields of every task's current stage."""
        out = {}
        for name, level in self.level.items():
            out.update(copy.deepcopy(self.stages(name)[level]))
        return out

    def update(self, success_per_task: dict, steps: int) -> dict:
        """Moves every task whose success reached promote_at (and whose stage is at least
        min_updates old) one stage on. Returns the task fields to set, or {} when nothing changed."""
        if self._pending:                      # the stages themselves go out first
            self._pending = False
            return self.fields()
        changed = False
        for name in self.level:
            self.since_change[name] += 1
            last = len(self.stages(name)) - 1
            rate = success_per_task.get(name)
            if (rate is not None and rate >= self.promote_at and self.level[name] < last
                    and self.since_change[name] >= self.min_updates):
                self.level[name] += 1
                self.since_change[name] = 0
                self.history.append([int(steps), name, self.level[name]])
                changed = True
        return self.fields() if changed else {}

    def finished(self) -> bool:
        """True when every task trains on the configured task itself."""
        return all(level == len(self.stages(name)) - 1 for name, level in self.level.items())

    def state(self) -> dict:
        return {"mode": "success", "promote_at": self.promote_at, "min_updates": self.min_updates,
                "level": dict(self.level), "since_change": dict(self.since_change),
                "target": copy.deepcopy(self.target), "history": [list(h) for h in self.history],
                "finished": self.finished()}

    @classmethod
    def from_state(cls, state: dict) -> "Curriculum":
        """The curriculum a checkpoint saved (its training stats' "curriculum")."""
        try:
            if state["mode"] != "success":
                raise CurriculumError(f"saved curriculum mode {state['mode']!r} is unknown")
            cur = cls.__new__(cls)
            cur.promote_at, cur.min_updates = float(state["promote_at"]), int(state["min_updates"])
            cur.target = copy.deepcopy(state["target"])
            cur.level = {k: int(v) for k, v in state["level"].items()}
            cur.since_change = {k: int(v) for k, v in state["since_change"].items()}
            cur.history = [list(h) for h in state["history"]]
        except (KeyError, TypeError, AttributeError) as exc:
            raise CurriculumError(f"saved curriculum state is incomplete ({exc!r}); it was not written by "
                                  "sim.curriculum.Curriculum.state()") from None
        unknown = sorted(set(cur.level) - set(STAGES))
        if unknown or set(cur.level) != set(cur.target):
            raise CurriculumError(f"saved curriculum names tasks {sorted(cur.level)} this version has no stages "
                                  f"for ({unknown}) or no target for")
        cur._pending = True                    # a restored curriculum sends its stages again
        return cur

    def full_task(self, task: dict) -> dict:
        """`task` with every staged field at the configured value (what evaluation flies)."""
        out = dict(task)
        for fields in self.target.values():
            out.update(copy.deepcopy(fields))
        return out
