"""Task states, with Celery's names and meanings.

``PENDING`` is what a result reads as before anything is stored (unknown and waiting look the
same, as in Celery). A task may also report a custom state, e.g. ``"PROGRESS"``, through
``update_state``; custom states are not ready.
"""

from __future__ import annotations

PENDING = "PENDING"
RECEIVED = "RECEIVED"
STARTED = "STARTED"
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
RETRY = "RETRY"
REVOKED = "REVOKED"

READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})
EXCEPTION_STATES = frozenset({FAILURE, RETRY, REVOKED})
ALL_STATES = frozenset({PENDING, RECEIVED, STARTED, SUCCESS, FAILURE, RETRY, REVOKED})
