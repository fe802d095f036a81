"""The canvas: signatures and the workflows built from them (chain, group, chord, map, chunks).

- :mod:`.primitives`: :class:`Signature`, :class:`chain`, :class:`group`, :class:`chord` and
  :func:`from_dict` - plain data that a worker can rebuild;
- :mod:`.dispatch`: sending a canvas (ids, planned messages, group records, batched publish);
- :mod:`.eager`: running a canvas inline under ``task_always_eager``;
- :mod:`.builtin`: the ``aqueue.map`` / ``aqueue.starmap`` tasks behind ``task.map``.

What a worker does when a step finishes is in :mod:`aqueue.worker.workflow`.
"""

from aqueue.canvas import primitives
from aqueue.canvas.primitives import *  # noqa: F403  (the public canvas names)

__all__ = primitives.__all__
