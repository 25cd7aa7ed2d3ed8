"""Skyloop policy_export (see DESIGN.md)."""
