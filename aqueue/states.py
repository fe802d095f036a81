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

#: A custom state (not in :data:`ALL_STATES`): the record of one item an async-generator task
#: yielded, as ``r.stream()`` reads it (see :mod:`aqueue.results.stream`).
STREAMING = "STREAMING"

READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})
EXCEPTION_STATES = frozenset({FAILURE, RETRY, REVOKED})
ALL_STATES = frozenset({PENDING, RECEIVED, STARTED, SUCCESS, FAILURE, RETRY, REVOKED})
