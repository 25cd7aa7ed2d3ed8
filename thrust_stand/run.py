"""Runs a procedure plan on a stand: every sample to the stand log as it arrives, safety first.

    plan = load_plan("sweep").with_limits(max_throttle=0.7)
    result = run_plan(open_stand("/dev/ttyUSB0,115200"), plan, "runs/sweep.csv", status=sys.stderr)

On any exception the first thing done is throttle 0; then the log's sidecar records how the run
ended. A safety stop (link lost, a current or thrust limit) raises RunAborted (its `result`
describes the partial run); Ctrl-C and other errors propagate after the same stop. A PNG of
the run is written next to the log whatever the ending.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from thrust_stand.driver import StandDriver, StandError, check_throttle
from thrust_stand.log import COLUMNS, StandLogWriter
from thrust_stand.plans import Plan, Segment
from thrust_stand.protocol import T_US_MOD, Sample

log = logging.getLogger(__name__)

STATUS_PERIOD_S = 0.2
LOG_PERIOD_S = 2.0
READ_TIMEOUT_S = 0.01
MAX_CLOCK_BACKWARDS = 3


class LimitExceeded(StandError):
    """A sample above the run's current or thrust limit: throttle 0 was commanded."""


class RunAborted(StandError):
    """The run was stopped for safety; `result` says what was recorded and where."""

    def __init__(self, message: str, result: "RunResult"):
        super().__init__(message)
        self.result = result


@dataclass
class RunResult:
    log_path: str
    png_path: str | None
    ended: str
    rows: int
    counters: dict
    points: list = field(default_factory=list)

    @property
    def completed(self) -> bool:
        return self.ended == "completed"


class StatusLine:
    """One line on a terminal stream, rewritten in place at most every STATUS_PERIOD_S."""

    def __init__(self, stream):
        self.stream = stream
        self._last_s = 0.0
        self._shown = False

    def update(self, text: str) -> None:
        """Rewritten in place on a terminal; elsewhere (a CI log) a new line every LOG_PERIOD_S."""
        now = time.monotonic()
        tty = self.stream is not None and self.stream.isatty()
        if self.stream is None or now - self._last_s < (STATUS_PERIOD_S if tty else LOG_PERIOD_S):
            return
        self._last_s = now
        self.stream.write("\r" + text.ljust(100)[:120] if tty else text + "\n")
        self.stream.flush()
        self._shown = tty

    def done(self) -> None:
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()


def _fmt(value: float, spec: str, unit: str) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:{spec}}{unit}"


class Recorder:
    """Sample -> stand log row (time from the stand's clock, unwrapped), limit checks, points."""

    def __init__(self, writer: StandLogWriter, limits: dict, stand: StandDriver, status: StatusLine):
        self.writer, self.limits, self.stand, self.status = writer, limits, stand, status
        self._t0_us = None
        self._last_us = 0
        self._wraps = 0
        self._backwards = 0
        for name in ("max_current_a", "max_thrust_n"):     # a NaN limit would never fire
            if not (isinstance(limits.get(name), (int, float)) and 0 < limits[name] < math.inf):
                raise ValueError(f"limits.{name} must be a positive finite number, got {limits.get(name)!r}")
        self.points: list[dict] = []
        self._segment_rows: list[tuple[float, dict]] = []

    def start_segment(self) -> None:
        self._segment_start_s = time.monotonic()
        self._segment_rows = []

    def _unwrap(self, t_us: int) -> bool:
        """Follows the stand's 32-bit microsecond clock across wraps; False for a sample whose clock
        went backwards (counted in `clock_backwards` and not logged: its time is wrong). A wrap is a
        small step forward modulo 2**32, a step back is anything else; MAX_CLOCK_BACKWARDS such samples
        in a row means the stand's clock restarted, and the run is aborted."""
        if self._t0_us is None:
            self._t0_us = self._last_us = t_us
            return True
        if (t_us - self._last_us) % T_US_MOD >= T_US_MOD // 2:
            self.stand.counters["clock_backwards"] = self.stand.counters.get("clock_backwards", 0) + 1
            self._backwards += 1
            if self._backwards >= MAX_CLOCK_BACKWARDS:
                raise StandError(f"the stand's clock went backwards in {self._backwards} samples in a row "
                                 f"(from {self._last_us} us to {t_us} us): did the stand restart?")
            log.warning("dropped a sample whose clock went backwards (%d us after %d us)", t_us, self._last_us)
            return False
        self._backwards = 0
        if t_us < self._last_us:
            self._wraps += 1
        self._last_us = t_us
        return True

    def add(self, s: Sample, segment: Segment, index: int, total: int) -> None:
        if not self._unwrap(s.t_us):
            return
        row = {"t_s": (s.t_us + self._wraps * T_US_MOD - self._t0_us) * 1e-6, "throttle": s.throttle,
               "esc_us": s.esc_us, "rpm": s.rpm, "thrust_n": s.thrust_n, "torque_nm": s.torque_nm,
               "voltage_v": s.voltage_v, "current_a": s.current_a}
        self.writer.write(**row)
        if self.writer.fault:                               # on the stand, a log that cannot be kept ends the run
            raise StandError(f"the stand log cannot be written ({self.writer.fault}): throttle 0 commanded")
        self._segment_rows.append((time.monotonic() - self._segment_start_s, row))
        c = self.stand.counters
        self.status.update(f"[{segment.label} {index}/{total}] t {row['t_s']:6.1f} s  thr {s.throttle:.3f}  "
                           f"thrust {_fmt(s.thrust_n, '.2f', ' N')}  {_fmt(s.rpm, '.0f', ' rpm')}  "
                           f"{_fmt(s.current_a, '.1f', ' A')}  {_fmt(s.voltage_v, '.2f', ' V')}  "
                           f"bad {c['bad_checksum'] + c['malformed']}")
        if s.current_a > self.limits["max_current_a"]:
            raise LimitExceeded(f"current {s.current_a:.1f} A above the limit of {self.limits['max_current_a']:g} A")
        if s.thrust_n > self.limits["max_thrust_n"]:
            raise LimitExceeded(f"thrust {s.thrust_n:.2f} N above the limit of {self.limits['max_thrust_n']:g} N")

    def end_segment(self, segment: Segment) -> None:
        """Averages the settled part of a held level (the sweep's points)."""
        if segment.settle_s is None:
            return
        rows = [r for t, r in self._segment_rows if t >= segment.settle_s]
        point = {"label": segment.label, "throttle_cmd": segment.throttle, "samples": len(rows)}
        for name in COLUMNS[1:]:
            values = np.array([r[name] for r in rows], dtype=float)
            values = values[np.isfinite(values)]
            point[name] = float(values.mean()) if len(values) else None
            if name in ("rpm", "thrust_n", "torque_nm") and len(values) > 1:
                point[f"{name}_std"] = float(values.std(ddof=1))
        self.points.append(point)


def run_plan(stand: StandDriver, plan: Plan, log_path: str, *, meta: dict | None = None, status=None,
             png: bool = True) -> RunResult:
    """Opens the stand, runs the plan, stops and closes the stand; returns what was recorded.
    Raises RunAborted on a safety stop (after throttle 0), and re-raises anything else after it."""
    segments = plan.segments()
    limit = check_throttle(plan.limits["max_throttle"], 1.0)  # a NaN limit would make min() keep the stand's
    stand.max_throttle = min(stand.max_throttle, limit)
    line = StatusLine(status)
    ended, error = "completed", None
    with stand:                                             # leaving it always commands throttle 0
        rate_hz = plan.sample_rate_hz(_number(stand.info.get("max_rate_hz")))
        writer = StandLogWriter(log_path, meta={
            **(meta or {}), "procedure": plan.procedure, "plan": plan.data, "plan_file": plan.source,
            "limits": plan.limits, "stand": stand.describe(), "firmware": stand.info.get("fw"),
            "sample_rate_hz": rate_hz})
        recorder = Recorder(writer, plan.limits, stand, line)
        try:
            if plan.data.get("tare_first"):
                stand.tare()
            if plan.spins:
                stand.arm(rate_hz)
            else:
                stand.start_streaming(rate_hz)
            for index, segment in enumerate(segments, start=1):
                _run_segment(stand, recorder, segment, index, len(segments), plan.spins)
            stand.stop()
        except (StandError, OSError) as exc:                 # link lost, a limit, a refused command
            stand.stop()
            log.warning("throttle 0 commanded, run aborted: %s", exc)
            ended, error = f"aborted: {exc}", exc
        except BaseException as exc:                        # Ctrl-C, a bug: stop, record, re-raise
            stand.stop()
            ended = "aborted: interrupted (Ctrl-C)" if isinstance(exc, KeyboardInterrupt) else \
                f"aborted: {type(exc).__name__}: {exc}"
            raise
        finally:
            line.done()
            writer.finish(ended, counters=dict(stand.counters), points=recorder.points)
    result = RunResult(log_path, None, ended, writer.rows, dict(stand.counters), recorder.points)
    if png and writer.rows:
        from thrust_stand.plot import plot_run
        result.png_path = plot_run(log_path)
    if error is not None:
        raise RunAborted(f"run aborted: {error}; the {writer.rows} samples received are in {log_path}", result) \
            from error
    return result


def _run_segment(stand: StandDriver, recorder: Recorder, segment: Segment, index: int, total: int,
                 armed: bool) -> None:
    if armed:
        stand.set_throttle(segment.throttle)
    recorder.start_segment()
    end = time.monotonic() + segment.duration_s
    while time.monotonic() < end:
        for sample in stand.read_samples(READ_TIMEOUT_S):
            recorder.add(sample, segment, index, total)
    recorder.end_segment(segment)


def _number(text) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def default_log_path(procedure: str, directory: str = "stand_logs") -> str:
    """A new, unique stand log path (two runs in the same second get different files)."""
    from skyloop.rowlog import reserve_log_path
    return reserve_log_path(directory, os.path.basename(procedure).replace(".json", "") or "stand")
