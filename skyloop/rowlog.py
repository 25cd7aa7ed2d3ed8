"""Row logs: a CSV written and flushed row by row, plus a JSON sidecar `<log>.json` with the run's
context, written when the run starts and rewritten when it ends, so a run that is cut off still
leaves a valid CSV of every row received and a sidecar that says the run never finished.
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import logging
import math
import os
import time

log = logging.getLogger(__name__)


def sidecar_path(csv_path: str) -> str:
    return os.path.splitext(csv_path)[0] + ".json"


def reserve_log_path(directory: str, stem: str, ext: str = ".csv") -> str:
    """A new log file `directory/stem-YYYYmmdd-HHMMSS[-N]ext`, created empty (O_EXCL) so that two runs
    started in the same second never share a file; `stem` must be a plain name (no path)."""
    if not stem or os.sep in stem or (os.altsep and os.altsep in stem) or stem.startswith("."):
        raise ValueError(f"log name {stem!r} must be a plain file name")
    os.makedirs(directory, exist_ok=True)
    base = os.path.join(directory, f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    for n in range(1, 10_000):
        path = base + (f"-{n}" if n > 1 else "") + ext
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            return path
        except FileExistsError:
            continue
    raise OSError(f"{base}*{ext}: no free log file name")


def open_raw(path: str):
    """The unbuffered file a LogFile writes to (tests replace it to simulate a full disk)."""
    return open(path, "wb", buffering=0)


class LogFile:
    """An append-only file whose `write` never raises: a logging fault (disk full, a pulled USB
    stick) must never stop a control loop. A write that fails, or writes only part, leaves its
    bytes pending in memory (at most `max_pending_bytes`; whole writes beyond that are dropped and
    counted); pending bytes are retried at most every RETRY_S and at `close`. The file on disk is
    always a prefix of what was written, so a row is never torn in the middle of the file.
    `fault` is the first error (None: none); `report()` says what happened, for the end of a run."""

    RETRY_S = 1.0

    def __init__(self, path: str, max_pending_bytes: int = 64 * 1024 * 1024):
        self.path = path
        self.raw = open_raw(path)            # an error here (before the run) is the caller's to report
        self.max_pending_bytes = max_pending_bytes
        self.fault: str | None = None
        self.dropped_writes = 0
        self.dropped_bytes = 0
        self._pending = bytearray()
        self._retry_at = 0.0
        self.closed = False

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if self._pending:
            if len(self._pending) + len(data) > self.max_pending_bytes:
                self.dropped_writes += 1
                self.dropped_bytes += len(data)
                return
            self._pending += data
            if time.monotonic() >= self._retry_at:
                self._drain()
            return
        self._pending += data
        self._drain()

    def _drain(self) -> bool:
        """Writes what is pending; False (and a retry later) when the file refuses it."""
        try:
            while self._pending:
                n = self.raw.write(bytes(self._pending))
                if not n:                               # None (would block) or 0: try again later
                    break
                del self._pending[:n]
        except (OSError, ValueError) as exc:
            if self.fault is None:
                self.fault = f"{type(exc).__name__}: {exc}"
                log.warning("writing %s failed (%s): rows are kept in memory and retried", self.path, exc)
        if self._pending:
            self._retry_at = time.monotonic() + self.RETRY_S
            return False
        return True

    def close(self) -> None:
        if self.closed:
            return
        self._drain()
        self.closed = True
        try:
            self.raw.close()
        except OSError as exc:
            self.fault = self.fault or f"{type(exc).__name__}: {exc}"

    @property
    def pending_bytes(self) -> int:
        return len(self._pending)

    def pending_lines(self) -> int:
        """Lines (rows) not yet wholly on disk."""
        return self._pending.count(b"\n")

    def report(self) -> str | None:
        """None when everything reached the file; otherwise what was lost and why."""
        if self.fault is None and not self.dropped_writes and not self._pending:
            return None
        lost = []
        if self._pending:
            lost.append(f"{len(self._pending)} bytes never reached the file")
        if self.dropped_writes:
            lost.append(f"{self.dropped_writes} writes ({self.dropped_bytes} bytes) dropped while the buffer was full")
        return (f"{self.path}: logging failed ({self.fault}); "
                + ("; ".join(lost) if lost else "everything was written once it cleared"))


class RowLogWriter:
    """A CSV written row by row (each row handed to the OS at once) and a JSON sidecar that says how
    the run ended; the stand log and the flight log are both one of these.

    with RowLogWriter("run.csv", columns, "skyloop.x/1", meta={...}) as log:
        log.write(t_s=0.01, ...)        # numbers (NaN/None -> empty cell) or short strings
        log.finish("completed")         # or "aborted: <reason>"; leaving the block without it
                                        # records "aborted: <exception>" or "aborted: interrupted"

    Opening it raises (before a run starts) when the file cannot be made; after that, `write` never
    raises for a disk fault (see LogFile): `fault` says what went wrong, `rows_lost` how many rows
    did not reach the file, and the sidecar records both (`log_fault`, `rows_lost`).
    """

    def __init__(self, path: str, columns, fmt: str, meta: dict | None = None, error=ValueError,
                 count_name: str = "rows"):
        self.path, self.columns, self.error, self.count_name = path, tuple(columns), error, count_name
        self.meta = {"format": fmt, "columns": list(self.columns),
                     "start_time": _dt.datetime.now(_dt.timezone.utc).isoformat(),
                     "ended": "running (the process stopped before the run ended)", **(meta or {})}
        self.rows = 0
        self._rows_dropped = 0
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._file = LogFile(path)
        self._buf = io.StringIO()
        self._csv = csv.writer(self._buf)
        self._emit(self.columns)
        if self._file.fault:
            raise OSError(f"{path}: cannot write the log ({self._file.fault})")
        self._write_sidecar()

    def _emit(self, row) -> None:
        self._buf.seek(0)
        self._buf.truncate()
        self._csv.writerow(row)
        before = self._file.dropped_writes
        self._file.write(self._buf.getvalue().encode("utf-8"))
        self._rows_dropped += self._file.dropped_writes - before

    def _write_sidecar(self) -> None:
        tmp = sidecar_path(self.path) + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({**self.meta, self.count_name: self.rows}, f, indent=2)
        os.replace(tmp, sidecar_path(self.path))

    @property
    def fault(self) -> str | None:
        return self._file.fault

    @property
    def rows_lost(self) -> int:
        """Rows dropped while the buffer was full, plus those (whole or in part) still not on disk."""
        return self._rows_dropped + self._file.pending_lines()

    def write(self, **sample) -> None:
        unknown = set(sample) - set(self.columns)
        if unknown:
            raise self.error(f"{self.path}: unknown log columns {sorted(unknown)}; valid: {self.columns}")
        row = []
        for col in self.columns:
            v = sample.get(col)
            if isinstance(v, str):
                row.append(v)
            else:
                row.append("" if v is None or not math.isfinite(v) else f"{v:.9g}")
        self._emit(row)
        self.rows += 1

    def finish(self, ended: str, **extra) -> None:
        """Records how the run ended. Never raises for a disk fault: a sidecar that cannot be
        written is logged (the CSV has what reached it)."""
        self.meta["ended"] = ended
        self.meta.update(extra)
        self._file.close()
        if self._file.fault:
            self.meta.update(log_fault=self._file.report(), rows_lost=self.rows_lost)
        try:
            self._write_sidecar()
        except OSError as exc:
            log.error("%s: the sidecar could not be written (%s): %s", self.path, exc, ended)

    @property
    def finished(self) -> bool:
        return self._file.closed

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self._file.closed:
            if exc_type is None:
                self.finish("completed")
            elif issubclass(exc_type, KeyboardInterrupt):
                self.finish("aborted: interrupted (Ctrl-C)")
            else:
                self.finish(f"aborted: {exc_type.__name__}: {exc}")
        return False


def read_row_log(path: str, error=ValueError) -> tuple[dict, dict]:
    """A row log back: (column -> float array, or list of strings for text columns; the sidecar).
    Empty cells read as NaN. A cut-off last line (the writer was killed mid-row) is dropped."""
    import numpy as np
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except OSError as exc:
        raise error(f"{path}: cannot read it ({exc.strerror})") from None
    if not rows:
        raise error(f"{path}: empty file (expected a header row)")
    header, body = rows[0], [r for r in rows[1:] if r]
    if body and len(body[-1]) != len(header):
        body = body[:-1]
    for lineno, r in enumerate(body, start=2):
        if len(r) != len(header):
            raise error(f"{path}: line {lineno}: {len(r)} cells, the header has {len(header)}")
    data = {}
    for k, name in enumerate(header):
        cells = [r[k] for r in body]
        try:
            data[name] = np.array([float(c) if c else math.nan for c in cells])
        except ValueError:
            data[name] = cells
    return data, read_sidecar(path, error)


def read_sidecar(csv_path: str, error=ValueError) -> dict:
    """The JSON sidecar of a row log ({} when there is none); `error` names a broken one."""
    meta_path = sidecar_path(csv_path)
    if not os.path.exists(meta_path):
        return {}
    try:
        with open(meta_path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise error(f"{meta_path}: not valid JSON: {exc}") from None
