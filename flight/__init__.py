"""Skyloop flight (see DESIGN.md)."""
