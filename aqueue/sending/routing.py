"""``task_routes`` and ``task_annotations``: per-task options chosen by the task's name.

Both settings take Celery's forms: a dict from a name or glob pattern (``"proj.io.*"``) to
options, a list of such dicts and functions tried in order, or a function
``(name, args, kwargs, options) -> dict | None``. A string as a route's value is a queue name.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from typing import Any

from aqueue.exceptions import ConfigurationError


def _match(table: Mapping[str, Any], name: str) -> Any:
    if name in table:
        return table[name]
    for pattern, value in table.items():
        if any(c in pattern for c in "*?[") and fnmatch.fnmatchcase(name, pattern):
            return value
    return None


def lookup(
    setting: Any,
    name: str,
    args: tuple[Any, ...] = (),
    kwargs: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The options ``setting`` gives task ``name`` (``{}`` when none match).

    The first matching entry wins, as in Celery.

    Raises:
        ConfigurationError: an entry is neither a dict nor a function, or the matching entry
            gives something other than a queue name, a dict of options or ``None``; the
            message names the task (else the call would go to a queue not meant for it).
        Exception: what a router function raises.
    """
    if not setting:
        return {}
    entries = setting if isinstance(setting, list | tuple) else [setting]
    for entry in entries:
        found: Any
        if isinstance(entry, Mapping):
            found = _match(entry, name)
        elif callable(entry):
            router: Callable[..., Any] = entry
            found = router(name, args, dict(kwargs or {}), dict(options or {}))
        else:
            raise ConfigurationError(
                f"routing task {name!r}: an entry of task_routes / task_annotations must be a "
                f"dict or a function, not {entry!r}"
            )
        if isinstance(found, str):
            return {"queue": found}
        if isinstance(found, Mapping):
            if found:
                return dict(found)
        elif found is not None:
            raise ConfigurationError(
                f"routing task {name!r}: a route must be a queue name, a dict of options or "
                f"None, not {found!r}"
            )
    return {}
