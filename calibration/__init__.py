"""Skyloop calibration (see DESIGN.md)."""
