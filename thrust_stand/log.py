"""The stand log: one CSV row per sample, flushed as it arrives, plus a JSON sidecar.

    t_s,throttle,esc_us,rpm,thrust_n,torque_nm,voltage_v,current_a
    0.0125,0.3,1300,11850,2.41,0.031,16.62,4.9

SI units (rpm is the one edge unit, as stands and ESCs report it); an empty cell is a quantity
the stand did not measure. The sidecar `<log>.json` holds the run's context: stand, motor, prop,
battery, procedure, firmware, start time and how the run ended. It is written when the run
starts and rewritten when it ends, so a run that is cut off still leaves a valid CSV of every
sample received and a sidecar that says the run never finished.
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field

import numpy as np

from skyloop.rowlog import RowLogWriter, read_sidecar

FORMAT = "skyloop.stand_log/1"
COLUMNS = ("t_s", "throttle", "esc_us", "rpm", "thrust_n", "torque_nm", "voltage_v", "current_a")


class StandLogError(ValueError):
    """A stand log that cannot be read: says which file, which line and what is wrong."""


class StandLogWriter(RowLogWriter):
    """Writes a stand log row by row (each row flushed to disk) and its sidecar.

    with StandLogWriter("run.csv", meta={"motor": "2306 1900KV", ...}) as log:
        log.write(t_s=0.01, throttle=0.3, rpm=11850, thrust_n=2.41)
        ...
        log.finish("completed")        # or "aborted: <reason>"; leaving the block without it
                                       # records "aborted: <exception>" or "aborted: interrupted"
    """

    def __init__(self, path: str, meta: dict | None = None):
        super().__init__(path, COLUMNS, FORMAT, meta, error=StandLogError, count_name="samples")


@dataclass
class StandLog:
    path: str
    data: dict            # column -> float array (NaN where not measured)
    meta: dict = field(default_factory=dict)

    def has(self, column: str) -> bool:
        return column in self.data and bool(np.isfinite(self.data[column]).any())

    def __len__(self) -> int:
        return len(self.data["t_s"])


def read_stand_log(path: str) -> StandLog:
    """Reads a stand log (and its sidecar, when present). Raises StandLogError naming the line."""
    if not os.path.exists(path):
        raise StandLogError(f"{path}: no such file")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise StandLogError(f"{path}: the file is empty (expected a header: {','.join(COLUMNS)})") from None
        header = [h.strip() for h in header]
        if "t_s" not in header:
            raise StandLogError(f"{path}: line 1: no t_s column; a stand log's header is {','.join(COLUMNS)} "
                                "(for a Tyto/RCbenchmark export, run `skyloop stand import` first)")
        cols = {name: [] for name in header if name in COLUMNS}
        for lineno, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise StandLogError(f"{path}: line {lineno}: {len(row)} cells, the header has {len(header)}")
            for name, cell in zip(header, row):
                if name not in cols:
                    continue
                try:
                    cols[name].append(float(cell) if cell.strip() else math.nan)
                except ValueError:
                    raise StandLogError(f"{path}: line {lineno}: column {name}: {cell!r} is not a number") from None
    data = {name: np.asarray(values, dtype=np.float64) for name, values in cols.items()}
    for name in COLUMNS:
        data.setdefault(name, np.full(len(data["t_s"]), math.nan))
    return StandLog(path=path, data=data, meta=read_sidecar(path, StandLogError))
