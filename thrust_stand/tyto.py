"""Tyto Robotics / RCbenchmark CSV exports -> the stand log, in SI.

`skyloop stand import EXPORT.csv -o stand_log.csv`. The export is UTF-8 with a BOM; each
quantity's unit sits in its header cell ("Thrust (kgf)", "Torque (N·m)"), which the app lets
users change, so units are read from the header and converted (an unknown unit is an error, not a
guess). Rotor speed comes as optical and/or electrical RPM (the app already divides by the pole
pairs); the optical sensor is preferred where it has readings. Text columns ("App message") and
the trailing empty column are ignored.
"""
from __future__ import annotations

import csv
import logging
import math
import os
import re

import numpy as np

from thrust_stand.log import COLUMNS, StandLog, StandLogWriter
from sim.core import GRAVITY_M_S2 as G_M_S2      # the C core's g: the one value

log = logging.getLogger(__name__)

#: unit in the header -> factor to SI
THRUST_UNITS = {"N": 1.0, "kgf": G_M_S2, "gf": G_M_S2 * 1e-3, "lbf": 4.4482216, "ozf": 0.27801385}
TORQUE_UNITS = {"N·m": 1.0, "N.m": 1.0, "Nm": 1.0, "N m": 1.0, "kgf·m": G_M_S2, "kgf·cm": G_M_S2 * 1e-2,
                "lbf·in": 0.11298483, "lbf·ft": 1.3558179, "ozf·in": 0.0070615518}
SPEED_UNITS = {"RPM": 1.0, "rpm": 1.0, "rad/s": 60.0 / (2.0 * math.pi), "Hz": 60.0}     # to rpm
TIME_UNITS = {"s": 1.0, "ms": 1e-3}
ESC_UNITS = {"µs": 1.0, "us": 1.0}
VOLTAGE_UNITS = {"V": 1.0, "mV": 1e-3}
CURRENT_UNITS = {"A": 1.0, "mA": 1e-3}
SPEED_COLUMNS = ("Motor Optical Speed", "Motor Electrical Speed")   # in order of preference

#: our column <- (Tyto quantity, its units)
QUANTITIES = {"t_s": ("Time", TIME_UNITS), "esc_us": ("ESC signal", ESC_UNITS), "thrust_n": ("Thrust", THRUST_UNITS),
              "torque_nm": ("Torque", TORQUE_UNITS), "voltage_v": ("Voltage", VOLTAGE_UNITS),
              "current_a": ("Current", CURRENT_UNITS)}


class TytoImportError(ValueError):
    """An export that cannot be read; names the file, line and column."""


def _read_columns(path: str) -> tuple[dict, dict, dict]:
    """{quantity: float array}, {quantity: unit} of the header cells `Quantity (unit)`, and
    {'sparse_columns': filled on under half the rows, 'skipped': lines left out and why}."""
    if not os.path.exists(path):
        raise TytoImportError(f"{path}: no such file")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows or not any(c.strip() for c in rows[0]):
        raise TytoImportError(f"{path}: the file is empty")
    header = [h.strip() for h in rows[0]]
    wanted = {}
    for k, cell in enumerate(header):
        m = re.fullmatch(r"(.+?) \((.+)\)", cell)
        if m:
            wanted[k] = (m.group(1).strip(), m.group(2).strip())
    if not any(q == "Time" for q, _u in wanted.values()):
        raise TytoImportError(f"{path}: line 1: no 'Time (s)' column; is this a Tyto/RCbenchmark export? "
                              f"The header is {','.join(header[:8])}...")
    values = {k: [] for k in wanted}
    body = [(n, r) for n, r in enumerate(rows[1:], start=2) if any(c.strip() for c in r)]
    # Columns filled on every row that reaches them are the export's core; the app also writes
    # columns filled on a few rows only (a step test's "90% settling time (s)"), and on the other
    # rows it may end the line before them. A row short of a core column is cut off.
    reach = {k: sum(len(r) > k for _n, r in body) for k in wanted}
    filled = {k: sum(len(r) > k and bool(r[k].strip()) for _n, r in body) for k in wanted}
    core = [k for k in wanted if reach[k] and filled[k] >= 0.5 * len(body)]
    last_core = max(core, default=-1)
    skipped = []
    for index, (lineno, row) in enumerate(body):
        if len(row) <= last_core:
            if index == len(body) - 1:
                log.warning("%s: line %d: the last line is cut short (%d cells); skipped", path, lineno, len(row))
                skipped.append(f"line {lineno}: the last line is cut short ({len(row)} cells), skipped")
                break
            raise TytoImportError(f"{path}: line {lineno}: {len(row)} cells, the header has {len(header)}, and "
                                  f"column {header[last_core]!r} (filled on the other rows) is missing: a broken line")
        for k in wanted:
            cell = row[k].strip() if k < len(row) else ""
            try:
                values[k].append(float(cell) if cell else math.nan)
            except ValueError:
                raise TytoImportError(f"{path}: line {lineno}: column {header[k]!r}: {cell!r} is not a number") from None
    data = {wanted[k][0]: np.asarray(v, dtype=np.float64) for k, v in values.items()}
    units = {wanted[k][0]: wanted[k][1] for k in wanted}
    sparse = [header[k] for k in wanted if 0 < filled[k] < 0.5 * len(body)]
    return data, units, {"sparse_columns": sparse, "skipped": skipped}


def _si(path: str, quantity: str, values: np.ndarray, unit: str, units: dict) -> np.ndarray:
    if unit not in units:
        raise TytoImportError(f"{path}: column '{quantity} ({unit})': unit {unit!r} unknown; known: {sorted(units)}")
    return values * units[unit]


def read_tyto(path: str) -> StandLog:
    """A Tyto/RCbenchmark export as a StandLog in SI (rpm stays rpm). `meta` records the units
    found and which speed column was used."""
    cols, units, read = _read_columns(path)
    n = len(cols["Time"])
    data = {name: np.full(n, math.nan) for name in COLUMNS}
    used = {}
    for column, (quantity, known) in QUANTITIES.items():
        if quantity in cols:
            data[column] = _si(path, quantity, cols[quantity], units[quantity], known)
            used[column] = f"{quantity} ({units[quantity]})"
    speed_column = None
    for quantity in SPEED_COLUMNS:
        if quantity in cols and np.nanmax(np.abs(np.nan_to_num(cols[quantity])), initial=0) > 0:
            data["rpm"] = _si(path, quantity, cols[quantity], units[quantity], SPEED_UNITS)
            speed_column = f"{quantity} ({units[quantity]})"
            used["rpm"] = speed_column
            break
    not_used = [f"{q} ({units[q]})" for q in cols if f"{q} ({units[q]})" not in used.values()]
    meta = {"source_format": "tyto", "source_file": os.path.basename(path), "speed_column": speed_column,
            "columns_used": used, "columns_not_used": not_used, "units_in_export": {q: units[q] for q in cols},
            **{k: v for k, v in read.items() if v}}
    if speed_column is None and any(q in cols for q in SPEED_COLUMNS):
        meta["speed_note"] = "the export's speed columns read 0 or are empty on every row: no rotor speed"
    return StandLog(path=path, data=data, meta=meta)


def import_tyto(path: str, out_path: str, meta: dict | None = None) -> StandLog:
    """Writes the export as our stand log (and sidecar) at out_path; returns what was read."""
    stand_log = read_tyto(path)
    d = stand_log.data
    with StandLogWriter(out_path, meta={"stand": "Tyto Robotics / RCbenchmark", "procedure": "import",
                                        **stand_log.meta, **(meta or {})}) as out:
        for k in range(len(stand_log)):
            out.write(**{name: float(d[name][k]) for name in COLUMNS if np.isfinite(d[name][k])})
        out.finish("completed (imported)")
    return stand_log
