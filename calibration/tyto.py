"""Tyto Robotics / RCbenchmark CSV exports, read by thrust_stand's importer (`thrust_stand.tyto`).

Kept as the calibration's entry point for these exports; the reading (units from the header,
optical or electrical speed) lives in one place, `thrust_stand.tyto.read_tyto`.
"""
from __future__ import annotations

from thrust_stand.tyto import THRUST_UNITS, TORQUE_UNITS, TytoImportError, read_tyto

__all__ = ["THRUST_UNITS", "TORQUE_UNITS", "TytoImportError", "read_tyto"]
