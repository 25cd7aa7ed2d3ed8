"""`skyloop teleop`: `fly --teleop` (flight/teleop.py serves the page; fly_course flies to its target)."""
from __future__ import annotations

from skyloop.verbs.fly import run  # noqa: F401  (the verb's run)


def add_arguments(parser) -> None:
    """The same options as `fly`, with --teleop on."""
    from flight.cli import add_arguments as fly_arguments
    fly_arguments(parser)
    parser.set_defaults(teleop=True)
