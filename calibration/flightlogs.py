"""Real flight logs in, one in-memory `Trajectory` out: SI units, world ENU, body FLU, quaternions
w, x, y, z, motors in the sim's order (PX4 / ArduPilot quad-X).

    traj = read_flight_log("flight.csv")                              # our flight log (CSV + sidecar)
    traj = read_flight_log("log.ulg")                                 # PX4 ULog (pyulog)
    traj = read_flight_log("00000218.BIN")                            # ArduPilot DataFlash (pymavlink)
    traj = read_flight_log("flight.tlog")                             # MAVLink telemetry log (pymavlink)
    traj = read_flight_log("cf.csv", mapping="crazyflie_usd")         # any CSV + a column mapping

Frames are converted once, here, through skyloop/frames.py; motor orders through
`skyloop.frames.motors_to_sim_order`. Streams logged at different rates are put on one time base
(the attitude's) by linear interpolation between neighbouring samples, never across a gap longer
than `MAX_HOLD_FACTOR` times that stream's own sample period (those samples read NaN).

Faults are reported and handled, never silently smoothed over (`Trajectory.issues`):
out-of-order and duplicate time stamps (sorted / dropped, counted), gaps (the log is split into
segments there; nothing differentiates or replays across one), dropouts (a sensor reading all
zeros, a motor reading 0 while the others spin, single-sample spikes: set to NaN, counted), and
a corrupt or truncated file: `FlightLogError` names where it broke and carries the trajectory read
before that point in `.partial`.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
from dataclasses import dataclass, field

import numpy as np

from calibration.data import ESC_RANGE_US, G_M_S2, RAD_S_PER_RPM, spike_rows
from skyloop import frames

log = logging.getLogger(__name__)
os.environ.setdefault("MAVLINK20", "1")   # as flight/link.py: pymavlink picks its dialect at first import

MAPPING_FORMAT = "skyloop.log_mapping/1"
MAPPINGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mappings")
GAP_FACTOR = 5.0          # a time step this many times the median step is a gap
MAX_HOLD_FACTOR = 3.0     # a slower stream is interpolated only between samples this close (x its period)
MIN_ROWS = 10

#: unit name -> (offset, scale): value_si = (raw - offset) * scale
UNITS = {
    "m": (0.0, 1.0), "cm": (0.0, 1e-2), "mm": (0.0, 1e-3), "m/s": (0.0, 1.0), "mm/s": (0.0, 1e-3),
    "rad/s": (0.0, 1.0), "deg/s": (0.0, math.pi / 180.0), "m/s2": (0.0, 1.0), "g": (0.0, G_M_S2),
    "mg": (0.0, G_M_S2 * 1e-3), "rpm": (0.0, RAD_S_PER_RPM), "s": (0.0, 1.0), "ms": (0.0, 1e-3),
    "us": (0.0, 1e-6), "V": (0.0, 1.0), "mV": (0.0, 1e-3), "1": (0.0, 1.0), "fraction": (0.0, 1.0),
    "percent": (0.0, 0.01), "pwm_0_65535": (0.0, 1.0 / 65535.0),
    "esc_us": (ESC_RANGE_US[0], 1.0 / (ESC_RANGE_US[1] - ESC_RANGE_US[0])),
}
#: mapping field -> (Trajectory attribute, number of columns)
MAPPED_FIELDS = {
    "position": ("pos_enu_m", 3), "velocity": ("vel_enu_m_s", 3), "quaternion": ("quat_wxyz", 4),
    "body_rates": ("omega_flu_rad_s", 3), "accel": ("accel_flu_m_s2", 3), "rotor_speed": ("rotor_rad_s", 4),
    "motor_command": ("motor_throttle", 4), "battery": ("battery_v", 1),
}
_WIDTH = {"pos_enu_m": 3, "vel_enu_m_s": 3, "quat_wxyz": 4, "omega_flu_rad_s": 3, "accel_flu_m_s2": 3,
          "rotor_rad_s": 4, "motor_throttle": 4, "battery_v": 1, "action": 4}


class FlightLogError(ValueError):
    """A flight log that cannot be read (or not all of it): says where and what to do. `partial`
    holds the Trajectory read before the break, when there was one."""

    def __init__(self, message: str, partial: "Trajectory | None" = None):
        super().__init__(message)
        self.partial = partial


@dataclass
class Trajectory:
    """One flight, SI, world ENU, body FLU, motors in the sim's order. Streams a log does not
    have are all-NaN arrays; `has(name)` says which are there."""
    t_s: np.ndarray                          # [n] seconds from the first sample, increasing
    pos_enu_m: np.ndarray                    # [n, 3]
    vel_enu_m_s: np.ndarray                  # [n, 3]
    quat_wxyz: np.ndarray                    # [n, 4] body FLU -> world ENU
    omega_flu_rad_s: np.ndarray              # [n, 3] gyro
    accel_flu_m_s2: np.ndarray               # [n, 3] accelerometer: specific force (hover: +g on z)
    rotor_rad_s: np.ndarray                  # [n, 4] measured rotor speeds
    motor_throttle: np.ndarray               # [n, 4] motor commands, 0..1
    battery_v: np.ndarray                    # [n]
    segment: np.ndarray                      # [n] int: a new segment starts after every gap
    source: str
    log_format: str
    action: np.ndarray | None = None         # [n, 4] the policy's action in [-1, 1] (our own flights)
    mode: list | None = None                 # flight mode per sample, where logged
    meta: dict = field(default_factory=dict)     # sidecar / mapping metadata (mass_kg, course, policy...)
    issues: list = field(default_factory=list)   # what was wrong with the log and what was done about it

    @property
    def n(self) -> int:
        return len(self.t_s)

    def has(self, name: str) -> bool:
        value = getattr(self, name)
        return value is not None and bool(np.isfinite(value).any())

    def summary(self) -> dict:
        dt = np.diff(self.t_s)
        return {"file": self.source, "format": self.log_format, "samples": self.n,
                "duration_s": float(self.t_s[-1] - self.t_s[0]) if self.n else 0.0,
                "rate_hz": float(1.0 / np.median(dt)) if len(dt) else None,
                "segments": int(self.segment.max() + 1) if self.n else 0,
                "streams": [k for k in _WIDTH if self.has(k)], "issues": list(self.issues)}


# ---------------------------------------------------------------- common pipeline

def _nan(n: int, width: int) -> np.ndarray:
    return np.full((n, width) if width > 1 else n, np.nan)


def _rows(fn, a: np.ndarray) -> np.ndarray:
    """Applies a one-vector frames.py function to every row."""
    return np.array([fn(r) for r in a]).reshape(a.shape) if len(a) else a


def _to_sim_frames(streams: dict, world: str, body: str) -> dict:
    """World / body vectors and the attitude into ENU / FLU, through skyloop/frames.py."""
    if (world, body) not in (("enu", "flu"), ("ned", "frd")):
        raise FlightLogError(f"frames world={world!r}, body={body!r}: use world 'enu' with body 'flu' (z up), or "
                             "'ned' with 'frd' (z down, as MAVLink, PX4 and ArduPilot log)")
    if world == "enu":
        return streams
    out = dict(streams)
    for name in ("pos_enu_m", "vel_enu_m_s"):
        if name in out:
            out[name] = _rows(frames.ned_to_enu, out[name])
    for name in ("omega_flu_rad_s", "accel_flu_m_s2"):
        if name in out:
            out[name] = _rows(frames.frd_to_flu, out[name])
    if "quat_wxyz" in out:
        out["quat_wxyz"] = _rows(frames.quat_ned_frd_to_enu_flu, out["quat_wxyz"])
    return out


def _dropouts(streams: dict, issues: list) -> None:
    """An accelerometer or attitude reading all zeros (impossible in flight), a stopped motor among
    spinning ones, a single-sample rotor-speed spike -> NaN, counted."""
    for name in ("accel_flu_m_s2", "quat_wxyz"):
        a = streams.get(name)
        if a is not None and (zero := np.all(a == 0.0, axis=1)).any():
            a[zero] = np.nan
            issues.append(f"{name}: {int(zero.sum())} samples read all zeros (sensor dropout), skipped")
    rotor = streams.get("rotor_rad_s")
    if rotor is not None:
        with np.errstate(invalid="ignore"):
            bad = (np.nanmax(np.where(np.isfinite(rotor), rotor, -np.inf), axis=1) > 0) & np.any(rotor <= 0, axis=1)
        for k in range(rotor.shape[1]):
            bad |= spike_rows(rotor[:, k])
        if bad.any():
            rotor[bad] = np.nan
            issues.append(f"rotor_rad_s: {int(bad.sum())} samples with a motor reading 0 among spinning ones "
                          "or a single-sample spike, skipped")
        faulty = disagreeing_channels(rotor)
        if faulty:
            rotor[:] = np.nan
            issues.append("rotor_rad_s: not used (a faulty RPM channel; the model uses the motor commands instead): "
                          + "; ".join(faulty))


MOTOR_DISAGREE_FRAC = 0.15   # a rotor speed this far off the median of the other motors disagrees


def disagreeing_channels(rotor: np.ndarray) -> list[str]:
    """RPM channels that disagree with the other motors through the flight, not for a manoeuvre:
    off the others' median by more than MOTOR_DISAGREE_FRAC typically (median ratio) or in more
    than half of the rows. Returns one line per such channel ([] when all agree)."""
    ok = np.all(np.isfinite(rotor) & (rotor > 0), axis=1)
    if ok.sum() < 10:
        return []
    r = rotor[ok]
    out = []
    for k in range(r.shape[1]):
        others = np.median(np.delete(r, k, axis=1), axis=1)
        ratio = r[:, k] / others
        off = np.abs(ratio - 1.0) > MOTOR_DISAGREE_FRAC
        typical = float(np.median(ratio))
        if abs(typical - 1.0) > MOTOR_DISAGREE_FRAC or off.mean() > 0.5:
            out.append(f"motor {k + 1} (sim order) reads {100 * typical:.0f} % of the others (median) and is more "
                       f"than {100 * MOTOR_DISAGREE_FRAC:.0f} % off in {100 * off.mean():.0f} % of {len(r)} rows")
    return out


def build_trajectory(t_s, streams: dict, source: str, log_format: str, *, world: str = "enu", body: str = "flu",
                     motor_order: str = "sim", meta: dict | None = None, issues: list | None = None,
                     mode: list | None = None) -> Trajectory:
    """Raw streams (time in seconds, SI, the log's frames and motor order) -> a Trajectory:
    frames converted, motors reordered, sorted, gaps found, dropouts removed."""
    issues = list(issues or [])
    t = np.asarray(t_s, float)
    keep = np.isfinite(t)
    if not keep.all():
        issues.append(f"{int((~keep).sum())} rows without a time stamp, skipped")
    order = np.argsort(t[keep], kind="stable")
    idx = np.flatnonzero(keep)[order]
    backwards = int(np.sum(np.diff(t[keep]) < 0))
    if backwards:
        issues.append(f"{backwards} samples out of time order, sorted")
    t = t[idx]
    dup = np.r_[False, np.diff(t) == 0]
    if dup.any():
        issues.append(f"{int(dup.sum())} samples with a repeated time stamp, dropped (the first kept)")
    idx, t = idx[~dup], t[~dup]
    streams = {k: np.asarray(v, float)[idx].copy() for k, v in streams.items() if v is not None}
    for k in ("rotor_rad_s", "motor_throttle"):
        if k in streams:
            streams[k] = frames.motors_to_sim_order(streams[k], motor_order)
    streams = _to_sim_frames(streams, world, body)
    if "quat_wxyz" in streams:
        q = streams["quat_wxyz"]
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        q *= np.where(q[:, :1] < 0, -1.0, 1.0)
    _dropouts(streams, issues)
    n = len(t)
    if n < 2:
        raise FlightLogError(f"{source}: {n} usable samples; a comparison needs a flight of at least {MIN_ROWS}")
    dt = np.diff(t)
    step = float(np.median(dt))
    gaps = np.flatnonzero(dt > GAP_FACTOR * step)
    for g in gaps[:10]:
        issues.append(f"gap of {dt[g] * 1e3:.0f} ms at t = {t[g] - t[0]:.3f} s (median step {step * 1e3:.1f} ms): "
                      "the log is split there, nothing is interpolated across it")
    if len(gaps) > 10:
        issues.append(f"... and {len(gaps) - 10} more gaps")
    segment = np.r_[0, np.cumsum(dt > GAP_FACTOR * step)]
    fields = {k: streams.get(k, _nan(n, w)) for k, w in _WIDTH.items() if k != "action"}
    actions = streams.get("action")
    mode = [mode[i] for i in idx] if mode is not None else None
    for msg in issues:
        log.info("%s: %s", os.path.basename(source), msg)
    return Trajectory(t_s=t - t[0], segment=segment, source=source, log_format=log_format, action=actions, mode=mode,
                      meta=dict(meta or {}), issues=issues, **fields)


def on_time_base(t_base: np.ndarray, t: np.ndarray, values: np.ndarray) -> np.ndarray:
    """A stream sampled at `t` onto `t_base`: linear interpolation between neighbours, NaN where the
    neighbours are further apart than MAX_HOLD_FACTOR stream periods (a gap) or outside the stream."""
    t, values = np.asarray(t, float), np.asarray(values, float)
    order = np.argsort(t, kind="stable")
    t, values = t[order], values[order]
    out_shape = (len(t_base),) + values.shape[1:]
    if len(t) < 2:
        return np.full(out_shape, np.nan)
    period = float(np.median(np.diff(t)))
    j = np.clip(np.searchsorted(t, t_base), 1, len(t) - 1)
    t0, t1 = t[j - 1], t[j]
    w = np.clip((t_base - t0) / np.where(t1 > t0, t1 - t0, 1.0), 0.0, 1.0)
    flat = values.reshape(len(t), -1)
    out = flat[j - 1] * (1 - w)[:, None] + flat[j] * w[:, None]
    bad = (t1 - t0 > MAX_HOLD_FACTOR * max(period, 1e-9)) | (t_base < t[0]) | (t_base > t[-1])
    out[bad] = np.nan
    return out.reshape(out_shape)


# ---------------------------------------------------------------- our own flight log

def read_own_log(path: str) -> Trajectory:
    """Our flight log (flight/runner.py FLIGHT_COLUMNS) and its sidecar."""
    from skyloop.rowlog import read_row_log
    data, meta = read_row_log(path, error=FlightLogError)
    issues = []
    if str(meta.get("ended", "completed")).startswith(("running", "aborted")):
        issues.append(f"the flight did not end cleanly: {meta.get('ended')}")

    def cols(names):
        missing = [c for c in names if c not in data]
        if missing:
            raise FlightLogError(f"{path}: not a skyloop flight log: no column(s) {missing}")
        return np.column_stack([data[c] for c in names])
    xyz = lambda name: cols([f"{name}_{a}" for a in "xyz"])   # noqa: E731
    rpm = cols([f"rpm_{k}" for k in range(1, 5)]) * RAD_S_PER_RPM
    streams = {"pos_enu_m": xyz("pos_enu_m"), "vel_enu_m_s": xyz("vel_enu_m_s"),
               "quat_wxyz": cols(["quat_w", "quat_x", "quat_y", "quat_z"]),
               "omega_flu_rad_s": _rows(frames.frd_to_flu, xyz("omega_frd_rad_s")),
               "rotor_rad_s": rpm, "motor_throttle": cols([f"sent_motor_{k}" for k in range(1, 5)]),
               "battery_v": data["battery_v"], "action": cols([f"action_{k}" for k in range(4)])}
    mode = data.get("mode") if isinstance(data.get("mode"), list) else None
    phase = data.get("phase") if isinstance(data.get("phase"), list) else []
    if "flight" in phase and len(data["t_s"]):          # the runner held the vehicle (arming, spool) until here
        meta = {**meta, "policy_from_t_s": float(data["t_s"][phase.index("flight")] - data["t_s"][0])}
    return build_trajectory(data["t_s"], streams, path, "skyloop", meta=meta, issues=issues, mode=mode)


# ---------------------------------------------------------------- generic CSV + mapping

def load_mapping(name_or_path: str) -> dict:
    """A column mapping (calibration/mappings/NAME.json or a path), checked."""
    path = name_or_path
    if not os.path.exists(path):
        path = os.path.join(MAPPINGS_DIR, name_or_path if name_or_path.endswith(".json") else name_or_path + ".json")
    if not os.path.exists(path):
        shipped = sorted(f[:-5] for f in os.listdir(MAPPINGS_DIR) if f.endswith(".json"))
        raise FlightLogError(f"mapping {name_or_path!r}: no such file; shipped mappings: {shipped}")
    try:
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
    except json.JSONDecodeError as exc:
        raise FlightLogError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    problems = []
    if m.get("format") != MAPPING_FORMAT:
        problems.append(f"format: expected {MAPPING_FORMAT!r}")
    if not isinstance(m.get("time"), dict) or m["time"].get("unit") not in UNITS:
        problems.append(f'time: expected {{"column": NAME, "unit": one of {sorted(UNITS)}}}')
    if m.get("quaternion_order", "wxyz") not in ("wxyz", "xyzw"):
        problems.append("quaternion_order: 'wxyz' or 'xyzw'")
    if m.get("motor_order", "sim") not in frames.MOTOR_ORDERS:
        problems.append(f"motor_order: one of {sorted(frames.MOTOR_ORDERS)}")
    for name, spec in (m.get("fields") or {}).items():
        if name not in MAPPED_FIELDS:
            problems.append(f"fields.{name}: unknown (valid: {sorted(MAPPED_FIELDS)})")
            continue
        width = MAPPED_FIELDS[name][1]
        if not isinstance(spec, dict) or len(spec.get("columns", [])) != width:
            problems.append(f"fields.{name}.columns: expected {width} column name(s)")
        if spec.get("unit", "1") not in UNITS:
            problems.append(f"fields.{name}.unit: {spec.get('unit')!r} is not one of {sorted(UNITS)}")
    if problems:
        raise FlightLogError(f"mapping {path}: " + "; ".join(problems))
    m["path"] = path
    return m


def _read_csv_rows(path: str, wanted: list[str]) -> tuple[np.ndarray, list[str], FlightLogError | None]:
    """The wanted columns as floats, up to the first broken line; (table, issues, the break or None)."""
    issues, rows, broken = [], [], None
    try:
        f = open(path, newline="", encoding="utf-8-sig", errors="replace")
    except OSError as exc:
        raise FlightLogError(f"{path}: cannot read it ({exc.strerror})") from None
    with f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in wanted if c not in header]
        if missing:
            raise FlightLogError(f"{path}: no column(s) {missing}: the mapping names them; the file has "
                                 f"{header[:12]}...; fix the mapping's column names")
        index = [header.index(c) for c in wanted]
        lines = list(reader)
    for lineno, r in enumerate(lines, start=2):
        if not r:
            continue
        try:
            if len(r) != len(header):
                raise ValueError(f"{len(r)} cells, the header has {len(header)}")
            rows.append([float(r[k]) if r[k].strip() else math.nan for k in index])
        except ValueError as exc:
            if lineno == len(lines) + 1:
                broken = FlightLogError(f"{path}: truncated at line {lineno}, the last ({exc}): the log was cut off "
                                        f"while being written; read the {len(rows)} rows before it")
            else:
                broken = FlightLogError(f"{path}: corrupt at line {lineno} ({exc}; {r[:4]!r}...); "
                                        f"read the {len(rows)} rows before it. Repair or cut the file there.")
            break
    if broken is None and rows and not _ends_with_newline(path):
        rows.pop()
        broken = FlightLogError(f"{path}: truncated at line {len(lines) + 1}, the last: it has no line end, so the "
                                f"file was cut off while being written; read the {len(rows)} rows before it")
    return np.asarray(rows, float).reshape(-1, len(wanted)), issues, broken


def _ends_with_newline(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) in (b"\n", b"\r")


def read_mapped_csv(path: str, mapping: dict | str) -> Trajectory:
    """Any CSV flight log whose columns a mapping names (units, frames, quaternion and motor order)."""
    m = load_mapping(mapping) if isinstance(mapping, str) else mapping
    specs = m.get("fields", {})
    wanted = [m["time"]["column"]] + [c for spec in specs.values() for c in spec["columns"]]
    table, issues, broken = _read_csv_rows(path, wanted)
    off, scale = UNITS[m["time"]["unit"]]
    t_s = (table[:, 0] - off) * scale
    streams, k = {}, 1
    for name, spec in specs.items():
        attr, width = MAPPED_FIELDS[name]
        off, scale = UNITS[spec.get("unit", "1")]
        values = (table[:, k:k + width] - off) * scale
        k += width
        if name == "quaternion" and m.get("quaternion_order", "wxyz") == "xyzw":
            values = values[:, [3, 0, 1, 2]]
        streams[attr] = values[:, 0] if width == 1 else values
    meta = {key: m[key] for key in ("vehicle", "name", "path") if key in m}
    meta["mass_kg"] = (m.get("vehicle") or {}).get("mass_kg")
    try:
        traj = build_trajectory(t_s, streams, path, f"csv ({m.get('name', 'mapping')})",
                                world=m.get("world_frame", "enu"), body=m.get("body_frame", "flu"), motor_order=m.get("motor_order", "sim"), meta=meta,
                                issues=issues)
    except FlightLogError:
        if broken:
            raise broken from None
        raise
    if broken:
        broken.partial = traj
        raise broken
    return traj


# ---------------------------------------------------------------- PX4 ULog

def _ulog_topic(ulog, name: str):
    return next((d for d in ulog.data_list if d.name == name and d.multi_id == 0), None)


def read_ulog(path: str) -> Trajectory:
    """A PX4 ULog: vehicle_local_position, vehicle_attitude, vehicle_angular_velocity (else the
    attitude's rates), sensor_combined, actuator_motors (else actuator_outputs as PWM),
    esc_status, battery_status, vehicle_status. NED / FRD in the file."""
    from pyulog import ULog
    topics = ["vehicle_local_position", "vehicle_attitude", "vehicle_angular_velocity", "sensor_combined",
              "actuator_outputs", "actuator_motors", "esc_status", "battery_status", "vehicle_status"]
    try:
        ulog = ULog(path, topics)
    except Exception as exc:     # pyulog raises bare exceptions on a broken header
        raise FlightLogError(f"{path}: not a readable ULog ({type(exc).__name__}: {exc}); "
                             "is it a .ulg from PX4?") from None
    issues = ["the file is corrupt in places (pyulog skipped the damaged messages)"] if ulog.file_corruption else []
    cut = None if ulog.file_corruption else _ulog_cut_at(path)
    att = _ulog_topic(ulog, "vehicle_attitude")
    if att is None:
        raise FlightLogError(f"{path}: no vehicle_attitude topic; enable it in the PX4 logger profile")
    t = att.data["timestamp"] * 1e-6

    def get(topic, fields, scale=1.0, offset=0.0):
        d = _ulog_topic(ulog, topic)
        if d is None or any(f not in d.data for f in fields):
            return None
        values = (np.column_stack([d.data[f] for f in fields]).astype(float) - offset) * scale
        return on_time_base(t, d.data["timestamp"] * 1e-6, values)
    streams = {"quat_wxyz": np.column_stack([att.data[f"q[{k}]"] for k in range(4)]).astype(float),
               "pos_enu_m": get("vehicle_local_position", ["x", "y", "z"]),
               "vel_enu_m_s": get("vehicle_local_position", ["vx", "vy", "vz"]),
               "omega_flu_rad_s": get("vehicle_angular_velocity", [f"xyz[{k}]" for k in range(3)]),
               "accel_flu_m_s2": get("sensor_combined", [f"accelerometer_m_s2[{k}]" for k in range(3)]),
               "rotor_rad_s": _ulog_esc_rpm(ulog, get, issues)}
    if streams["omega_flu_rad_s"] is None:
        streams["omega_flu_rad_s"] = (get("sensor_combined", [f"gyro_rad[{k}]" for k in range(3)])
                                      if "rollspeed" not in att.data else
                                      np.column_stack([att.data[f] for f in ("rollspeed", "pitchspeed", "yawspeed")]))
    motors = get("actuator_motors", [f"control[{k}]" for k in range(4)])
    if motors is None:
        lo, hi = ESC_RANGE_US
        motors = get("actuator_outputs", [f"output[{k}]" for k in range(4)], 1.0 / (hi - lo), lo)
        issues.append(f"motor commands from actuator_outputs PWM, throttle = (pwm - {lo:g}) / {hi - lo:g} us")
    streams["motor_throttle"] = motors
    battery = get("battery_status", ["voltage_v"])
    streams["battery_v"] = battery[:, 0] if battery is not None else None
    streams = {k: v for k, v in streams.items() if v is not None}
    traj = build_trajectory(t, streams, path, "px4 ulog", world="ned", body="frd", motor_order="px4", issues=issues,
                            meta={"start_timestamp_us": int(ulog.start_timestamp)})
    if cut is not None:
        raise FlightLogError(f"{path}: truncated at byte {cut} of {os.path.getsize(path)}: the last message is cut "
                             f"off (the log was not closed); read the {traj.n} samples before it", partial=traj)
    return traj


def _ulog_esc_rpm(ulog, get, issues: list):
    """esc_status rpm as rotor speeds, or None (said in `issues`) when it carries no telemetry:
    esc_count 0 or every rpm 0 (an ESC without telemetry still publishes the topic)."""
    esc = _ulog_topic(ulog, "esc_status")
    if esc is None:
        return None
    count = esc.data.get("esc_count")
    rpm = get("esc_status", [f"esc[{k}].esc_rpm" for k in range(4)], RAD_S_PER_RPM)
    if rpm is None:
        return None
    if count is not None and not np.any(count > 0):
        issues.append("esc_status: esc_count is 0 in every sample (no ESC telemetry); its rpm are not used")
        return None
    if not np.any(np.nan_to_num(rpm) != 0):
        issues.append("esc_status: every rpm reads 0 (no ESC telemetry, or the motors never spun); not used")
        return None
    return rpm


def _ulog_cut_at(path: str) -> int | None:
    """The offset of a ULog's last message when the file ends inside it (a log that was not
    closed), else None. Walks the message headers: uint16 size, uint8 type, after a 16-byte header."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        data = f.read()
    offset = 16
    while offset + 3 <= size:
        msg_size = data[offset] | (data[offset + 1] << 8)
        if offset + 3 + msg_size > size:
            return offset
        offset += 3 + msg_size
    return offset if offset != size else None


# ---------------------------------------------------------------- ArduPilot DataFlash and MAVLink tlog

#: message -> (trajectory stream, fields, scale) for DataFlash logs (ArduCopter 3.x and 4.x names)
DATAFLASH = {
    "ATT": ("euler_deg", ("Roll", "Pitch", "Yaw"), 1.0),
    "EKF1": ("pos_ned", ("PN", "PE", "PD"), 1.0), "XKF1": ("pos_ned", ("PN", "PE", "PD"), 1.0),
    "NKF1": ("pos_ned", ("PN", "PE", "PD"), 1.0),
    "IMU": ("imu", ("GyrX", "GyrY", "GyrZ", "AccX", "AccY", "AccZ"), 1.0),
    "RCOU": ("pwm", ("C1", "C2", "C3", "C4"), 1.0),
    "CURR": ("battery_v", ("Volt",), 1.0), "BAT": ("battery_v", ("Volt",), 1.0),
}
DATAFLASH_VEL = ("VN", "VE", "VD")
#: message -> (stream, fields, scale) for MAVLink telemetry logs
TLOG = {
    "ATTITUDE_QUATERNION": ("quat", ("q1", "q2", "q3", "q4"), 1.0),
    "ATTITUDE": ("euler_rates", ("roll", "pitch", "yaw", "rollspeed", "pitchspeed", "yawspeed"), 1.0),
    "LOCAL_POSITION_NED": ("posvel", ("x", "y", "z", "vx", "vy", "vz"), 1.0),
    "HIGHRES_IMU": ("imu", ("xgyro", "ygyro", "zgyro", "xacc", "yacc", "zacc"), 1.0),
    "SCALED_IMU": ("imu_scaled", ("xgyro", "ygyro", "zgyro", "xacc", "yacc", "zacc"), 1.0),   # mrad/s, mg
    "RAW_IMU": ("imu_raw", ("xgyro", "ygyro", "zgyro", "xacc", "yacc", "zacc"), 1.0),
    "SERVO_OUTPUT_RAW": ("pwm", ("servo1_raw", "servo2_raw", "servo3_raw", "servo4_raw"), 1.0),
    "ESC_TELEMETRY_1_TO_4": ("rpm", ("rpm",), RAD_S_PER_RPM),
    "SYS_STATUS": ("battery_v", ("voltage_battery",), 1e-3),
}


def _collect(conn, table: dict, path: str) -> tuple[dict, list, list]:
    """Every message of the table's types: stream -> (times [n], values [n, k]); plus mode changes."""
    got: dict[str, tuple[list, list]] = {}
    modes, issues = [], []
    while True:
        try:
            msg = conn.recv_match(type=list(table) + ["MODE", "HEARTBEAT"])
        except Exception as exc:   # pymavlink raises bare errors on a damaged record
            issues.append(f"stopped reading at byte {getattr(conn, 'offset', '?')}: {type(exc).__name__}: {exc}")
            break
        if msg is None:
            break
        kind = msg.get_type()
        t = getattr(msg, "_timestamp", None)
        if kind in ("MODE", "HEARTBEAT"):
            if kind == "HEARTBEAT" and msg.get_srcComponent() != 1:
                continue
            modes.append((t, str(getattr(msg, "Mode", getattr(msg, "custom_mode", "")))))
            continue
        stream, names, scale = table[kind]
        names = names + (DATAFLASH_VEL if stream == "pos_ned" else ())
        try:
            values = []
            for n in names:
                v = getattr(msg, n, None)
                if v is None and n.startswith("C") and hasattr(msg, "Ch" + n[1:]):   # RCOU in ArduCopter 3.3
                    v = getattr(msg, "Ch" + n[1:])
                values.extend(v[:4] if isinstance(v, (list, tuple)) else [v])
            row = [float(v) * scale for v in values]
        except (TypeError, ValueError):
            continue
        times, rows = got.setdefault(stream, ([], []))
        times.append(t)
        rows.append(row)
    out = {k: (np.asarray(ts, float), np.asarray(rs, float)) for k, (ts, rs) in got.items()}
    return out, modes, issues


def read_mavlink_log(path: str) -> Trajectory:
    """An ArduPilot DataFlash log (.bin) or a MAVLink telemetry log (.tlog), through pymavlink."""
    from pymavlink import mavutil
    dataflash = path.lower().endswith((".bin", ".log"))
    try:
        conn = mavutil.mavlink_connection(path, **({} if dataflash else {"robust_parsing": True}))
    except Exception as exc:
        raise FlightLogError(f"{path}: pymavlink cannot open it ({type(exc).__name__}: {exc})") from None
    table = DATAFLASH if dataflash else TLOG
    got, modes, issues = _collect(conn, table, path)
    base = "euler_deg" if dataflash else "quat"
    if base not in got and not dataflash and "euler_rates" in got:
        base = "euler_rates"
    if base not in got or len(got[base][0]) < 2:
        raise FlightLogError(f"{path}: no attitude messages ({'ATT' if dataflash else 'ATTITUDE_QUATERNION or ATTITUDE'}); "
                             f"found {sorted(got) or 'nothing readable'}")
    t = got[base][0]
    on = lambda name: on_time_base(t, *got[name]) if name in got else None   # noqa: E731
    streams = {}
    if dataflash:
        euler = np.radians(got["euler_deg"][1])
        streams["quat_wxyz"] = np.array([frames.euler_rpy_to_quat(*e) for e in euler])
        posvel = on("pos_ned")
        if posvel is not None:
            unset = np.all(posvel == 0.0, axis=1)     # the EKF logs exact zeros until it has a position
            if unset.any():
                posvel[unset] = np.nan
                issues.append(f"position: {int(unset.sum())} samples of exact zeros (estimator not initialised), "
                              "skipped")
            streams["pos_enu_m"], streams["vel_enu_m_s"] = posvel[:, :3], posvel[:, 3:6]
    else:
        euler = on("euler_rates")
        if "quat" in got:
            streams["quat_wxyz"] = on("quat")
        elif euler is not None:
            streams["quat_wxyz"] = np.array([frames.euler_rpy_to_quat(*e) for e in euler[:, :3]])
            issues.append("attitude from ATTITUDE (euler angles): the log has no ATTITUDE_QUATERNION")
        posvel = on("posvel")
        if posvel is not None:
            streams["pos_enu_m"], streams["vel_enu_m_s"] = posvel[:, :3], posvel[:, 3:6]
        if euler is not None:
            streams["omega_flu_rad_s"] = euler[:, 3:6]
        rpm = on("rpm")
        if rpm is not None:
            streams["rotor_rad_s"] = rpm
    imu = on("imu")
    for name, message in (("imu_scaled", "SCALED_IMU"), ("imu_raw", "RAW_IMU")):
        if imu is None and name in got:   # mrad/s and mg (ArduPilot scales RAW_IMU the same way)
            imu = on(name) * np.r_[[1e-3] * 3, [G_M_S2 * 1e-3] * 3]
            issues.append(f"gyro and accelerometer from {message} (mrad/s, mg): the log has no HIGHRES_IMU")
    if imu is not None:
        streams["omega_flu_rad_s"], streams["accel_flu_m_s2"] = imu[:, :3], imu[:, 3:6]
    pwm = on("pwm")
    if pwm is not None:
        lo, hi = ESC_RANGE_US
        streams["motor_throttle"] = np.clip((pwm - lo) / (hi - lo), 0.0, 1.0)
        issues.append(f"motor commands from output PWM, throttle = (pwm - {lo:g}) / {hi - lo:g} us")
    battery = on("battery_v")
    if battery is not None:
        streams["battery_v"] = np.where(battery[:, 0] > 0, battery[:, 0], np.nan)
    mode = None
    if modes:
        mt = np.array([m[0] for m in modes])
        k = np.searchsorted(mt, t, side="right") - 1
        mode = [modes[i][1] if i >= 0 else "" for i in k]
    traj = build_trajectory(t, streams, path, "ardupilot dataflash" if dataflash else "mavlink tlog", world="ned",
                            body="frd", motor_order="ardupilot", issues=issues, mode=mode)
    cut = _mavlink_cut(conn, dataflash)
    if cut:
        raise FlightLogError(f"{path}: {cut}; read the {traj.n} samples before it", partial=traj)
    return traj


def _mavlink_cut(conn, dataflash: bool) -> str:
    """Where a DataFlash or tlog file ends inside a message (a log that was not closed), '' if it does not."""
    if dataflash:
        end = max((offs[-1] + conn.formats[k].len for k, offs in enumerate(getattr(conn, "offsets", []))
                   if offs and k in conn.formats), default=0)
        size = int(getattr(conn, "data_len", 0))
        if end > size:
            return f"truncated at byte {size}: the last message is cut off ({end - size} bytes of it missing)"
        if end and end < size:
            return f"{size - end} bytes after the last whole message at byte {end} are not a message (cut off or corrupt)"
        return ""
    left = conn.mav.buf_len() if hasattr(conn.mav, "buf_len") else 0
    if left:
        return (f"truncated: the file ends {left} bytes into a message at byte {conn.f.tell() - left} "
                "(the log was cut off)")
    return ""


# ---------------------------------------------------------------- dispatch

def read_flight_log(path: str, mapping: dict | str | None = None) -> Trajectory:
    """Any supported flight log, by its extension (a CSV with `mapping` is read through it)."""
    if not os.path.exists(path):
        raise FlightLogError(f"{path}: no such file")
    lower = path.lower()
    if mapping is not None:
        return read_mapped_csv(path, mapping)
    if lower.endswith(".ulg"):
        return read_ulog(path)
    if lower.endswith((".bin", ".tlog", ".log")):
        return read_mavlink_log(path)
    if lower.endswith(".csv"):
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            header = f.readline()
        if header.startswith("t_s,tick_ms,pos_enu_m_x"):
            return read_own_log(path)
        raise FlightLogError(f"{path}: a CSV that is not a skyloop flight log; give --mapping (a JSON naming its "
                             f"columns, units and frames; e.g. {os.path.join(MAPPINGS_DIR, 'crazyflie_usd.json')})")
    raise FlightLogError(f"{path}: unknown log type; supported: our flight log (.csv), PX4 .ulg, ArduPilot .bin, "
                         "MAVLink .tlog, or any CSV with --mapping")
