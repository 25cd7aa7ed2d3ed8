"""External pose for a vehicle with no GPS (indoors: motion capture), forwarded to its autopilot.

    --pose sim://?noise_m=0.003&noise_rad=0.005&latency_s=0.02&rate_hz=50   # our sim's truth, with noise and latency
    --pose mocap://vicon@192.168.1.5/drone1        # the `motioncapture` package: vicon, optitrack, qualisys, vrpn, ...

A source gives the newest pose in the course's frame (world ENU, body FLU) as a dict (t_s,
pos_enu_m, vel_enu_m_s (NaN when the source has none), quat_wxyz). `PoseForwarder` sends it to
the autopilot at 30..50 Hz in the frames ArduPilot and PX4 expect:

- ArduPilot (VISO_TYPE 1, EK3_SRC1_POSXY / VELXY / POSZ / YAW = 6 ExternalNav):
  VISION_POSITION_ESTIMATE (x north, y east, z down; roll, pitch, yaw of body FRD in NED) and
  VISION_SPEED_ESTIMATE (NED), after one SET_GPS_GLOBAL_ORIGIN so its EKF has an origin;
- PX4 (EKF2_EV_CTRL): ODOMETRY with frame_id MAV_FRAME_LOCAL_NED, child_frame_id
  MAV_FRAME_BODY_FRD, the quaternion NED <- FRD, the velocity in NED.

The motion capture's world frame is taken as the course's: z up, x east (set the mocap's axes so,
or rotate them before this); positions are sent as they are, so LOCAL_POSITION_NED comes back in
the course's frame and the vehicle must stand at the course's start (--course-frame local).
"""
from __future__ import annotations

import collections
import logging
import math
import threading
import time
from urllib.parse import parse_qs, urlparse

import numpy as np

from skyloop import frames
from flight.service import Worker

log = logging.getLogger(__name__)
ORIGIN_LAT_LON_ALT = (-35.363262, 149.165237, 584.0)     # any fixed point: the hall has no GPS
MOCAP_TYPES = ("vicon", "optitrack", "optitrack_closed_source", "qualisys", "nokov", "vrpn", "motionanalysis")


class PoseError(ValueError):
    """A pose source cannot be made or read; the message says what to change."""


class SimulatedMocap:
    """A motion capture fed by the sim's truth (an observer of flight.ardupilot_bridge.JsonBridge):
    samples at rate_hz of sim time, adds white noise (position noise_m, attitude noise_rad per
    axis, seeded) and hands each sample out latency_s of sim time later."""

    def __init__(self, rate_hz: float = 100.0, noise_m: float = 0.003, noise_rad: float = 0.005,
                 latency_s: float = 0.02, seed: int = 0):
        for name, value, lo, hi in (("rate_hz", rate_hz, 10.0, 1000.0), ("noise_m", noise_m, 0.0, 0.5),
                                    ("noise_rad", noise_rad, 0.0, 0.5), ("latency_s", latency_s, 0.0, 0.5)):
            if not (math.isfinite(value) and lo <= value <= hi):
                raise PoseError(f"simulated mocap: {name} {value} is outside {lo:g}..{hi:g}")
        self.period_s, self.noise_m, self.noise_rad, self.latency_s = 1.0 / rate_hz, noise_m, noise_rad, latency_s
        self.rng = np.random.default_rng(seed)
        self._samples: collections.deque = collections.deque(maxlen=int(rate_hz * (latency_s + 1.0)) + 2)
        self._now_s = -1.0
        self._lock = threading.Lock()

    def __getstate__(self):                    # to the bridge's process: without the lock
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def describe(self) -> str:
        return (f"simulated mocap ({1 / self.period_s:g} Hz, noise {self.noise_m:g} m / {self.noise_rad:g} rad, "
                f"latency {self.latency_s * 1e3:g} ms)")

    def observe(self, t_s: float, truth: dict) -> None:
        """The bridge's observer: the truth after each physics step."""
        with self._lock:
            self._now_s = t_s
            if self._samples and t_s - self._samples[-1]["t_s"] < self.period_s - 1e-9:
                return
            q_noise = frames.euler_rpy_to_quat(*self.rng.normal(0.0, self.noise_rad, 3)) if self.noise_rad else None
            q = np.asarray(truth["quat_wxyz"], float)
            self._samples.append({
                "t_s": t_s, "pos_enu_m": np.asarray(truth["pos_enu_m"], float) + self.rng.normal(0.0, self.noise_m, 3),
                "vel_enu_m_s": np.asarray(truth["vel_enu_m_s"], float),
                "quat_wxyz": frames.quat_multiply(q, q_noise) if q_noise is not None else q})

    def latest(self) -> dict | None:
        """The newest sample at least latency_s old (sim time), or None before the first."""
        with self._lock:
            ready = [s for s in self._samples if s["t_s"] <= self._now_s - self.latency_s + 1e-9]
            return ready[-1] if ready else None

    def close(self) -> None:
        pass


class MocapSource:
    """A motion capture system through the `motioncapture` package (libmotioncapture: Vicon,
    OptiTrack, Qualisys, NOKOV, VRPN, Motion Analysis); one rigid body by name. Velocity comes
    from differencing successive frames."""

    def __init__(self, kind: str, host: str, body: str):
        if kind not in MOCAP_TYPES:
            raise PoseError(f"mocap type {kind!r}: use one of {', '.join(MOCAP_TYPES)}")
        try:
            import motioncapture
        except ImportError:
            raise PoseError("--pose mocap:// needs the motioncapture package: pip install motioncapture") from None
        try:
            self.mc = motioncapture.connect(kind, {"hostname": host})
        except Exception as exc:     # the bindings raise RuntimeError and others
            raise PoseError(f"cannot connect to the {kind} motion capture at {host}: {exc}") from None
        self.kind, self.host, self.body = kind, host, body
        self._latest: dict | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="mocap")
        self._thread.start()

    def describe(self) -> str:
        return f"{self.kind} motion capture at {self.host}, body {self.body}"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.mc.waitForNextFrame()
                obj = self.mc.rigidBodies.get(self.body)
            except Exception as exc:  # noqa: BLE001 - a dropped connection ends the stream; latest() ages
                log.warning("motion capture: %s", exc)
                return
            if obj is None:
                continue
            now = time.monotonic()
            pos = np.asarray(obj.position, float)
            quat = np.array([obj.rotation.w, obj.rotation.x, obj.rotation.y, obj.rotation.z], float)
            prev = self._latest
            vel = (pos - prev["pos_enu_m"]) / (now - prev["t_s"]) if prev and now > prev["t_s"] else np.full(3, np.nan)
            self._latest = {"t_s": now, "pos_enu_m": pos, "vel_enu_m_s": vel, "quat_wxyz": quat}

    def latest(self) -> dict | None:
        return self._latest

    def close(self) -> None:
        self._stop.set()


def parse_pose(url: str):
    """`--pose` -> a pose source. sim:// makes a SimulatedMocap (someone must feed it the truth:
    `source.observe`); mocap://TYPE@HOST/BODY connects to a motion capture."""
    parsed = urlparse(url)
    if parsed.scheme == "sim":
        opts = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        unknown = set(opts) - {"rate_hz", "noise_m", "noise_rad", "latency_s", "seed"}
        if unknown:
            raise PoseError(f"--pose {url}: unknown options {sorted(unknown)} (rate_hz, noise_m, noise_rad, latency_s, seed)")
        try:
            values = {k: (int(v) if k == "seed" else float(v)) for k, v in opts.items()}
        except ValueError as exc:
            raise PoseError(f"--pose {url}: {exc}") from None
        return SimulatedMocap(**values)
    if parsed.scheme == "mocap":
        kind, _, host = parsed.netloc.rpartition("@")
        body = parsed.path.strip("/")
        if not kind or not host or not body:
            raise PoseError(f"--pose {url}: write mocap://TYPE@HOST/BODY, e.g. mocap://vicon@192.168.1.5/drone1")
        return MocapSource(kind, host, body)
    raise PoseError(f"--pose {url}: use sim://?noise_m=...&latency_s=... or mocap://TYPE@HOST/BODY")


class PoseForwarder:
    """Sends the source's newest pose to the autopilot on `master` (a pymavlink connection) at
    rate_hz in a thread, each pose once; `sent` counts them. The pose's own age is the time it
    was taken (the autopilot compensates its latency with its EKF's delay parameter)."""

    def __init__(self, source, master, autopilot: str = "ardupilot", rate_hz: float = 40.0,
                 target_system: int = 1):
        if not 30.0 <= rate_hz <= 50.0:
            raise PoseError(f"pose forwarding at {rate_hz:g} Hz: ArduPilot and PX4 want 30..50 Hz")
        self.source, self.master, self.autopilot = source, master, autopilot
        self.period_s, self.target_system = 1.0 / rate_hz, target_system
        self.sent, self._last_t = 0, None
        self._t0_us = int(time.monotonic() * 1e6)
        self._worker = Worker(self._run, "pose-forwarder", join_timeout_s=1.0)
        self._stop = self._worker.stop_event

    def start(self) -> "PoseForwarder":
        self.send_origin()
        self._worker.start()
        return self

    def stop(self) -> None:
        self._worker.stop()

    def send_origin(self) -> None:
        if self.autopilot == "ardupilot":
            lat, lon, alt = ORIGIN_LAT_LON_ALT
            self.master.mav.set_gps_global_origin_send(self.target_system, int(lat * 1e7), int(lon * 1e7),
                                                       int(alt * 1e3), int(time.monotonic() * 1e6))

    def _run(self) -> None:
        next_s, origin_again = time.monotonic(), time.monotonic() + 1.0
        while not self._stop.is_set():
            try:
                self.send_once()
                if time.monotonic() > origin_again:      # until the EKF has taken it (it ignores repeats)
                    self.send_origin()
                    origin_again = time.monotonic() + 5.0
            except OSError as exc:
                log.warning("pose forwarding stopped: %s", exc)
                return
            next_s += self.period_s
            self._stop.wait(max(0.0, next_s - time.monotonic()))

    def send_once(self) -> bool:
        pose = self.source.latest()
        if pose is None or pose["t_s"] == self._last_t:
            return False
        self._last_t = pose["t_s"]
        usec = int(time.monotonic() * 1e6) - self._t0_us
        pos_ned = frames.enu_to_ned(pose["pos_enu_m"])
        vel_ned = frames.enu_to_ned(pose["vel_enu_m_s"])
        q_ned_frd = frames.quat_enu_flu_to_ned_frd(pose["quat_wxyz"])
        if self.autopilot == "ardupilot":
            roll, pitch, yaw = frames.quat_to_euler_rpy(q_ned_frd)
            self.master.mav.vision_position_estimate_send(usec, *[float(v) for v in pos_ned], roll, pitch, yaw)
            if np.all(np.isfinite(vel_ned)):
                self.master.mav.vision_speed_estimate_send(usec, *[float(v) for v in vel_ned])
        else:
            from pymavlink.dialects.v20 import common as mav
            nan21 = [math.nan] + [0.0] * 20
            self.master.mav.odometry_send(usec, mav.MAV_FRAME_LOCAL_NED, mav.MAV_FRAME_BODY_FRD,
                                          *[float(v) for v in pos_ned], [float(v) for v in q_ned_frd],
                                          *[float(v) for v in vel_ned], math.nan, math.nan, math.nan, nan21, nan21)
        self.sent += 1
        return True
