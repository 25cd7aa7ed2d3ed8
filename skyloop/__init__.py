"""The `skyloop` command line (skyloop.cli)."""
