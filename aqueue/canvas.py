"""Signatures: a task call packed as data, to send later, pass to ``link``, or compose.

``add.s(2)`` is a *partial* signature: arguments given when it is applied are prepended, so a
``link=add.s(2)`` callback of a task that returned 8 runs ``add(8, 2)``, as in Celery. ``add.si(2)``
is *immutable*: it ignores a parent's result.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from aqueue.exceptions import ConfigurationError

if TYPE_CHECKING:
    from aqueue.app import Aqueue
    from aqueue.result import AsyncResult


class Signature:
    """A task name with arguments and send options.

    Args:
        task: the registered task name.
        args, kwargs: the (partial) arguments.
        options: ``apply_async`` options (``countdown``, ``queue``, ``priority``...).
        immutable: if True, arguments from a parent result are not prepended.
        app: the app to send with (needed to ``delay``; a worker sets it when it applies one).
    """

    def __init__(
        self,
        task: str,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        immutable: bool = False,
        app: Aqueue | None = None,
    ) -> None:
        self.task = task
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.options = dict(options or {})
        self.immutable = immutable
        self.app = app

    def __repr__(self) -> str:
        args = ", ".join([*map(repr, self.args), *(f"{k}={v!r}" for k, v in self.kwargs.items())])
        return f"{self.task}{'i' if self.immutable else ''}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Signature) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.task, self.args))

    def set(self, **options: Any) -> Signature:
        """Merge ``options`` into this signature's send options; returns ``self``."""
        self.options.update(options)
        return self

    def clone(
        self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Signature:
        """A copy with ``args`` prepended (unless immutable), ``kwargs`` and options merged."""
        new_args = self.args if self.immutable else (*args, *self.args)
        return Signature(
            self.task,
            new_args,
            {**self.kwargs, **(kwargs or {})},
            {**copy.deepcopy(self.options), **options},
            self.immutable,
            self.app,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form carried inside messages (``link``, ``link_error``)."""
        return {
            "task": self.task,
            "args": list(self.args),
            "kwargs": self.kwargs,
            "options": self.options,
            "immutable": self.immutable,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], app: Aqueue | None = None) -> Signature:
        """Inverse of :meth:`to_dict`."""
        return cls(
            data["task"],
            tuple(data.get("args", ())),
            data.get("kwargs") or {},
            data.get("options") or {},
            bool(data.get("immutable")),
            app,
        )

    async def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[Any]:
        """Send it; ``args`` are prepended to the signature's own unless it is immutable."""
        return await self.apply_async(args, kwargs)

    async def apply_async(
        self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> AsyncResult[Any]:
        """Send it with extra arguments and options merged in.

        Raises:
            ConfigurationError: the signature has no app (build it with ``task.s()``).
        """
        if self.app is None:
            raise ConfigurationError(
                f"signature {self!r} has no app: build it with task.s(...) or "
                f"app.signature(name, ...)"
            )
        sig = self.clone(args, kwargs, **options)
        return await self.app.send_task(sig.task, sig.args, sig.kwargs, **sig.options)


def signature(
    task: str | Signature | dict[str, Any],
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: dict[str, Any] | None = None,
    app: Aqueue | None = None,
    **options: Any,
) -> Signature:
    """Build a signature by task name (``signature("proj.add", args=(2, 2), countdown=1)``),
    or copy one / rebuild one from its dict form."""
    if isinstance(task, Signature):
        return task.clone()
    if isinstance(task, dict):
        return Signature.from_dict(task, app)
    return Signature(task, args, kwargs, options, app=app)
