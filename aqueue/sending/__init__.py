"""Sending task calls: the typed options, routing, and the app's :class:`Sender`.

- :mod:`.options`: :class:`SendOptions` (``apply_async``) and :class:`TaskOptions`
  (``@app.task``), checked by type checkers and, from the same declarations, at run time;
- :mod:`.routing`: ``task_routes`` and ``task_annotations`` lookups;
- :mod:`.sender`: building a :class:`~aqueue.message.Message` and publishing it.
"""

from aqueue.sending.options import RetryPolicy, SendOptions, TaskOptions
from aqueue.sending.sender import Sender

__all__ = ["RetryPolicy", "SendOptions", "Sender", "TaskOptions"]
