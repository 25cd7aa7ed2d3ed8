"""A compared flight as an MCAP file, for Foxglove and the other tools that read MCAP.

    skyloop compare LOG --profile P --mcap flight.mcap

Channels (JSON messages; the Foxglove ones with Foxglove's own schemas, so its 3D panel draws
them without set-up; world frame "world" = ENU, metres):

    /flight/pose        foxglove.PoseInFrame   the drone, every sample
    /flight/state       skyloop.FlightState    velocity, body rates, battery, mode, the policy's action
    /sim/replay         foxglove.PosesInFrame  the sim's open-loop replay from each start (one per window)
    /sim/replay_error   skyloop.ReplayError    that window's position error at 0.1 / 0.5 / 1 s
    /compare/summary    skyloop.CompareSummary the figures `compare --json` prints, once

Message times are the log's seconds from its first sample (a replay window at its start).
"""
from __future__ import annotations

import json
import math

import numpy as np

FRAME = "world"

_VEC3 = {"type": "object", "properties": {a: {"type": "number"} for a in "xyz"}}
_QUAT = {"type": "object", "properties": {a: {"type": "number"} for a in "xyzw"}}
_TIME = {"type": "object", "properties": {"sec": {"type": "integer"}, "nsec": {"type": "integer"}}}
_POSE = {"type": "object", "properties": {"position": _VEC3, "orientation": _QUAT}}
SCHEMAS = {
    "foxglove.PoseInFrame": {"type": "object", "properties": {"timestamp": _TIME, "frame_id": {"type": "string"},
                                                              "pose": _POSE}},
    "foxglove.PosesInFrame": {"type": "object", "properties": {"timestamp": _TIME, "frame_id": {"type": "string"},
                                                               "poses": {"type": "array", "items": _POSE}}},
    "skyloop.FlightState": {"type": "object", "properties": {
        "t_s": {"type": "number"}, "vel_enu_m_s": _VEC3, "omega_flu_rad_s": _VEC3, "battery_v": {"type": "number"},
        "mode": {"type": "string"}, "action": {"type": "array", "items": {"type": "number"}}}},
    "skyloop.ReplayError": {"type": "object", "properties": {
        "t_s": {"type": "number"}, "error_m": {"type": "object", "additionalProperties": {"type": "number"}}}},
    "skyloop.CompareSummary": {"type": "object"},
}
CHANNELS = {"/flight/pose": "foxglove.PoseInFrame", "/flight/state": "skyloop.FlightState",
            "/sim/replay": "foxglove.PosesInFrame", "/sim/replay_error": "skyloop.ReplayError",
            "/compare/summary": "skyloop.CompareSummary"}


def _num(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _stamp(t_s: float) -> dict:
    ns = int(round(t_s * 1e9))
    return {"sec": ns // 1_000_000_000, "nsec": ns % 1_000_000_000}


def _pose(pos, quat_wxyz=None) -> dict:
    q = quat_wxyz if quat_wxyz is not None and np.all(np.isfinite(quat_wxyz)) else (1.0, 0.0, 0.0, 0.0)
    return {"position": dict(zip("xyz", (_num(v) for v in pos))),
            "orientation": {"x": float(q[1]), "y": float(q[2]), "z": float(q[3]), "w": float(q[0])}}


def write_mcap(traj, replay_series: dict | None, summary: dict, path: str) -> dict:
    """Writes the flight (a calibration.flightlogs.Trajectory), the replay (compare.replay's series,
    or None when the log gave none) and the summary to `path`. Returns {channel: messages written}."""
    from mcap.writer import Writer

    counts = {topic: 0 for topic in CHANNELS}
    with open(path, "wb") as f:
        writer = Writer(f)
        writer.start(profile="", library="skyloop")
        schema_ids = {name: writer.register_schema(name=name, encoding="jsonschema",
                                                   data=json.dumps(schema).encode()) for name, schema in SCHEMAS.items()}
        channel_ids = {topic: writer.register_channel(topic=topic, message_encoding="json",
                                                      schema_id=schema_ids[schema]) for topic, schema in CHANNELS.items()}

        def add(topic: str, t_s: float, message: dict) -> None:
            ns = int(round(t_s * 1e9))
            writer.add_message(channel_ids[topic], log_time=ns, publish_time=ns,
                               data=json.dumps(message, allow_nan=False).encode())
            counts[topic] += 1

        action = traj.action if traj.action is not None else np.full((traj.n, 0), np.nan)
        windows = []
        if replay_series is not None:
            starts, pos_sim, per_window = replay_series["starts"], replay_series["pos_sim"], replay_series["per_window"]
            step = float(np.median(np.diff(traj.t_s)))
            windows = [(float(traj.t_s[s]), w, s) for w, s in enumerate(starts)]
        events = [(float(t), 0, i) for i, t in enumerate(traj.t_s)] + [(t, 1, (w, s)) for t, w, s in windows]
        for t, kind, what in sorted(events, key=lambda e: (e[0], e[1])):      # MCAP wants time order per channel
            if kind == 0:
                i = what
                if np.all(np.isfinite(traj.pos_enu_m[i])):
                    add("/flight/pose", t, {"timestamp": _stamp(t), "frame_id": FRAME,
                                            "pose": _pose(traj.pos_enu_m[i], traj.quat_wxyz[i])})
                add("/flight/state", t, {"t_s": t, "vel_enu_m_s": dict(zip("xyz", map(_num, traj.vel_enu_m_s[i]))),
                                         "omega_flu_rad_s": dict(zip("xyz", map(_num, traj.omega_flu_rad_s[i]))),
                                         "battery_v": _num(traj.battery_v[i]),
                                         "mode": str(traj.mode[i]) if traj.mode is not None else "",
                                         "action": [_num(a) for a in action[i]]})
            else:
                w, s = what
                path = pos_sim[:, w]
                ok = np.all(np.isfinite(path), axis=1)
                add("/sim/replay", t, {"timestamp": _stamp(t), "frame_id": FRAME,
                                       "poses": [_pose(p) for p in path[ok]]})
                errors = {h: _num(e[w]) for h, e in per_window.items()}
                add("/sim/replay_error", t, {"t_s": t, "dt_s": step,
                                             "error_m": {h: e for h, e in errors.items() if e is not None}})
        end = float(traj.t_s[-1]) if traj.n else 0.0
        add("/compare/summary", end, json.loads(json.dumps(summary, default=str), parse_constant=lambda _c: None))
        writer.finish()
    return counts
