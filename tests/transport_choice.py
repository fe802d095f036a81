"""Which transports the parametrised suites run over (light: worker subprocesses import it)."""

from __future__ import annotations

import os

__all__ = ["chosen_transports"]


def chosen_transports(default: list[str]) -> list[str]:
    """``default``, or the transports named in ``$AQUEUE_TEST_TRANSPORTS`` (comma-separated):
    ``AQUEUE_TEST_TRANSPORTS=sentinel`` runs the contract suites over a Redis Sentinel group
    (``make test-cluster``)."""
    named = os.environ.get("AQUEUE_TEST_TRANSPORTS", "")
    return [t.strip() for t in named.split(",") if t.strip()] or default
