"""Skyloop thrust_stand (see DESIGN.md)."""
