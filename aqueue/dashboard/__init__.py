"""``aqueue dashboard``: a web dashboard of workers, queues, tasks, workflows and beat, live.

Install the extra (``pip install 'aqueue[dashboard]'``: Starlette, uvicorn, Jinja2), start workers
with ``-E`` (task events), then either run ``aqueue dashboard -A proj`` or mount
:class:`Dashboard` in your own ASGI application. See ``docs/dashboard.md``.

- :mod:`.web`: the ASGI application (routes, templates, server-sent events).
- :mod:`.monitor`: what it watches (events, heartbeats, queue depths).
- :mod:`.history`, :mod:`.store`: the bounded task history and where it is kept.
- :mod:`.workflows`: chains, groups and chords found in the history, and their graphs.
- :mod:`.pages`, :mod:`.charts`: the pages' contents.
- :mod:`.actions`: what the pages can do (revoke, purge, replay, beat entries...).
- :mod:`.access`: loopback, token, basic auth, read-only, CSRF.
"""

from aqueue.dashboard.access import Access
from aqueue.dashboard.monitor import Monitor
from aqueue.dashboard.web import Dashboard

__all__ = ["Access", "Dashboard", "Monitor"]
