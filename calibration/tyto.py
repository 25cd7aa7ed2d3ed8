"""A minimal reader of Tyto Robotics / RCbenchmark CSV exports, into a StandLog in SI.

Stop-gap: the project's Tyto importer belongs to thrust_stand (issue 9, `skyloop stand import`).
`read_tyto` uses it when it exists and falls back to this small reader otherwise; once the
importer is in, this module reduces to the delegation (see `_stand_importer`).

The export is UTF-8 with a BOM; units sit in the header cells ("Thrust (N)", "Torque (N·m)"),
which the app lets users change; speed comes as optical and/or electrical RPM (optical preferred
where it has readings).
"""
from __future__ import annotations

import importlib
import inspect
import logging
import math
import re

import numpy as np

from thrust_stand.log import COLUMNS, StandLog

from calibration.data import G_M_S2, CalibrationError, _read_numeric_csv

log = logging.getLogger(__name__)

#: unit in the header -> factor to SI
THRUST_UNITS = {"N": 1.0, "kgf": G_M_S2, "gf": G_M_S2 * 1e-3, "lbf": 4.4482216, "ozf": 0.27801385}
TORQUE_UNITS = {"N·m": 1.0, "N.m": 1.0, "Nm": 1.0, "N m": 1.0, "kgf·m": G_M_S2, "kgf·cm": G_M_S2 * 1e-2,
                "lbf·in": 0.11298483, "lbf·ft": 1.3558179, "ozf·in": 0.0070615518}


def _stand_importer():
    """thrust_stand's Tyto importer (issue 9), when it exists as a function path -> StandLog."""
    for module_name in ("thrust_stand.tyto", "thrust_stand.importer", "thrust_stand.tyto_import"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for func_name in ("read_tyto", "import_tyto", "read_tyto_csv"):
            func = getattr(module, func_name, None)
            try:
                inspect.signature(func).bind("export.csv")
            except (TypeError, ValueError):
                continue
            return func
    return None


def read_tyto(path: str) -> StandLog:
    importer = _stand_importer()
    if importer is not None:
        stand_log = importer(path)
        if isinstance(stand_log, StandLog):
            return stand_log
        log.warning("%s.%s returned %s, not a StandLog: reading %s with calibration.tyto instead",
                    importer.__module__, importer.__name__, type(stand_log).__name__, path)
    return read_tyto_minimal(path)


def _column(cols: dict, quantity: str, units: dict, path: str):
    """The column 'quantity (unit)' in SI, or None."""
    for name, values in cols.items():
        m = re.fullmatch(rf"{quantity} \((.+)\)", name)
        if m:
            unit = m.group(1).strip()
            if unit not in units:
                raise CalibrationError(f"{path}: column {name!r}: unit {unit!r} unknown; known: {sorted(units)}")
            return values * units[unit]
    return None


def read_tyto_minimal(path: str) -> StandLog:
    cols = _read_numeric_csv(path, ("Time (s)",), keep=lambda cell: cell.endswith(")"))  # quantities have units
    n = len(cols["Time (s)"])
    data = {name: np.full(n, math.nan) for name in COLUMNS}
    data["t_s"] = cols["Time (s)"]
    data["esc_us"] = cols.get("ESC signal (µs)", data["esc_us"])
    thrust = _column(cols, "Thrust", THRUST_UNITS, path)
    torque = _column(cols, "Torque", TORQUE_UNITS, path)
    if thrust is not None:
        data["thrust_n"] = thrust
    if torque is not None:
        data["torque_nm"] = torque
    data["voltage_v"] = cols.get("Voltage (V)", data["voltage_v"])
    data["current_a"] = cols.get("Current (A)", data["current_a"])
    speed_source = None
    for name in ("Motor Optical Speed (RPM)", "Motor Electrical Speed (RPM)"):
        if name in cols and np.nanmax(np.abs(cols[name]), initial=0) > 0:
            data["rpm"], speed_source = cols[name], name
            break
    meta = {"source_format": "tyto", "speed_column": speed_source, "note": "read by calibration.tyto (minimal reader)"}
    return StandLog(path=path, data=data, meta=meta)

