"""Fixtures of the in-process federation (`federation_grid.py`) for every strategy test."""

from tests.strategies.federation_grid import consortium_dir, server_identity  # noqa: F401
