"""Row logs: a CSV written and flushed row by row, plus a JSON sidecar `<log>.json` with the run's
context, written when the run starts and rewritten when it ends, so a run that is cut off still
leaves a valid CSV of every row received and a sidecar that says the run never finished.
"""
from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os


def sidecar_path(csv_path: str) -> str:
    return os.path.splitext(csv_path)[0] + ".json"


class RowLogWriter:
    """A CSV written row by row (each row flushed to disk) and a JSON sidecar that says how the
    run ended; the stand log and the flight log are both one of these.

    with RowLogWriter("run.csv", columns, "skyloop.x/1", meta={...}) as log:
        log.write(t_s=0.01, ...)        # numbers (NaN/None -> empty cell) or short strings
        log.finish("completed")         # or "aborted: <reason>"; leaving the block without it
                                        # records "aborted: <exception>" or "aborted: interrupted"
    """

    def __init__(self, path: str, columns, fmt: str, meta: dict | None = None, error=ValueError,
                 count_name: str = "rows"):
        self.path, self.columns, self.error, self.count_name = path, tuple(columns), error, count_name
        self.meta = {"format": fmt, "columns": list(self.columns),
                     "start_time": _dt.datetime.now(_dt.timezone.utc).isoformat(),
                     "ended": "running (the process stopped before the run ended)", **(meta or {})}
        self.rows = 0
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._file = open(path, "w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file)
        self._csv.writerow(self.columns)
        self._file.flush()
        self._write_sidecar()

    def _write_sidecar(self) -> None:
        tmp = sidecar_path(self.path) + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({**self.meta, self.count_name: self.rows}, f, indent=2)
        os.replace(tmp, sidecar_path(self.path))

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
        self._csv.writerow(row)
        self._file.flush()
        self.rows += 1

    def finish(self, ended: str, **extra) -> None:
        self.meta["ended"] = ended
        self.meta.update(extra)
        if not self._file.closed:
            self._file.flush()
            self._file.close()
        self._write_sidecar()

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
