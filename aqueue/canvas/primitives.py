"""The canvas: task calls packed as data (signatures), and workflows composed of them.

``add.s(2)`` is a *partial* signature: arguments given when it is applied are prepended, so a
``link=add.s(2)`` callback of a task that returned 8 runs ``add(8, 2)``, as in Celery. ``add.si(2)``
is *immutable*: it ignores a parent's result.

Signatures compose, with Celery's names and meaning:

- ``chain(a, b, c)`` or ``a | b | c``: run one after another, each result prepended to the next
  signature's arguments. The chain's result is the last task's, with ``.parent`` links back.
- ``group(a, b, c)``: run in parallel; the result is a :class:`~aqueue.results.group.GroupResult`
  whose value is the list of results, in order.
- ``chord(header, body)`` (or ``chord(header)(body)``, or ``group(...) | body``): run the header
  group, then the body once with the list of header results. A group followed by more steps in a
  chain is a chord too (an *implicit chord*).
- ``task.map(items)`` / ``task.starmap(items)``: one message that calls the task for each item in
  turn in one worker (Celery's ``xmap`` / ``xstarmap``); ``task.chunks(items, n)``: a group of
  starmaps over ``n`` items each.

Every object here is plain data: :meth:`Canvas.to_dict` gives JSON-safe dicts and
:func:`from_dict` rebuilds any of them, so a worker can continue a workflow a client built.
Sending (``apply_async``) is in :mod:`aqueue.canvas.dispatch`; what a worker does when a step
finishes is in :mod:`aqueue.worker.workflow`.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Self, overload

from aqueue.exceptions import ConfigurationError

if TYPE_CHECKING:
    from aqueue.app import Aqueue
    from aqueue.results.group import GroupResult
    from aqueue.results.result import AsyncResult
    from aqueue.task import Task

__all__ = [
    "Canvas",
    "Signature",
    "chain",
    "chord",
    "chunks",
    "from_dict",
    "group",
    "signature",
    "xmap",
    "xstarmap",
]

#: The built-in tasks behind ``task.map`` and ``task.starmap`` (see :mod:`aqueue.canvas.builtin`).
MAP_TASK = "aqueue.map"
STARMAP_TASK = "aqueue.starmap"


class Canvas:
    """What signatures, chains, groups and chords have in common.

    Attributes:
        options: ``apply_async`` options (``countdown``, ``queue``, ``priority``, ``link``...).
    """

    options: dict[str, Any]
    _app: Aqueue | None

    # -- building ----------------------------------------------------------------------------

    @property
    def app(self) -> Aqueue | None:
        """The app to send with: given explicitly, else the first signature's."""
        return self._app

    def set(self, **options: Any) -> Self:
        """Merge ``options`` into the send options; returns ``self`` (as in Celery)."""
        self.options.update(options)
        return self

    def link(self, callback: Signature) -> Signature:
        """Apply ``callback`` with the result when this succeeds; returns ``callback``.

        On a chain the callback follows the last task, on a group each member, on a chord the
        body (Celery's choices).
        """
        self.options["link"] = [*_as_list(self.options.get("link")), callback]
        return callback

    def link_error(self, errback: Signature) -> Signature:
        """Call ``errback`` with ``(request, exc, traceback)`` if this fails; returns ``errback``.

        On a chain it applies to every task, on a group to each member, on a chord to the body
        (which fails with :class:`~aqueue.exceptions.ChordError` when a header member fails).
        """
        self.options["link_error"] = [*_as_list(self.options.get("link_error")), errback]
        return errback

    def clone(
        self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Self:
        """A deep copy with partial ``args`` prepended, ``kwargs`` and ``options`` merged in."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form carried inside messages; :func:`from_dict` is its inverse."""
        raise NotImplementedError

    def __or__(self, other: Canvas) -> Canvas:
        """``a | b``: ``b`` runs after ``a``, given its result (``group | b`` is a chord)."""
        if not isinstance(other, Canvas):
            return NotImplemented
        if isinstance(self, group):
            return chord(self, other, app=self._app)
        if isinstance(self, chord) and not self.options:
            body = other if self.body is None else self.body | other
            return chord(self.header, body, app=self._app)
        return chain(self, other, app=self._app)

    # -- ids and results ---------------------------------------------------------------------

    @property
    def id(self) -> str | None:
        """The id of the result this stands for (assigned by :meth:`freeze`), else ``None``."""
        raise NotImplementedError

    def freeze(self) -> AsyncResult[Any] | GroupResult:
        """Assign every task id (and group id) now, and return the result handle.

        Sending the frozen signature later uses the same ids, so the handle can be given out
        before the work is sent, as in Celery.

        Raises:
            ConfigurationError: the signature has no app.
        """
        from aqueue.canvas.dispatch import result_for

        self.assign_ids()
        return result_for(self.require_app(), self)

    def assign_ids(self, want: str | None = None) -> None:
        """Give every task and group an id where it has none (``want`` for this one's result)."""
        raise NotImplementedError

    def require_app(self) -> Aqueue:
        """The app, or a ConfigurationError saying how to give one."""
        app = self.app
        if app is None:
            raise ConfigurationError(
                f"{self!r} has no app: build signatures with task.s(...) or "
                f"app.signature(name, ...), or pass app="
            )
        return app

    # -- sending -----------------------------------------------------------------------------

    async def apply_async(
        self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> AsyncResult[Any] | GroupResult:
        """Send it, with partial ``args``/``kwargs`` and ``options`` merged in; return the result.

        Task ids are assigned before anything is sent. A group or chord is published in batches
        of 1,000 messages per broker call.

        Raises:
            ConfigurationError: no app, an unknown option or one with a bad value (on any part,
                callbacks included), a task id used for two tasks (a frozen signature used
                twice), or a chord with no result backend.
            BrokerConnectionError: the broker or result backend cannot be reached.
            EncodeError: arguments cannot be serialised.
        """
        from aqueue.canvas.dispatch import apply

        return await apply(self, args, kwargs, options)

    async def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[Any] | GroupResult:
        """Send it; ``args`` are prepended to the arguments as partial arguments."""
        return await self.apply_async(args, kwargs)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Canvas)
            and type(other) is type(self)
            and self.to_dict() == other.to_dict()
        )

    def __hash__(self) -> int:
        return hash(type(self).__name__)


class Signature(Canvas):
    """A task name with arguments and send options.

    Args:
        task: the registered task name.
        args: the (partial) positional arguments.
        kwargs: the (partial) keyword arguments.
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
        self._app = app

    @property
    def app(self) -> Aqueue | None:
        return self._app

    @app.setter
    def app(self, value: Aqueue | None) -> None:
        self._app = value

    def __repr__(self) -> str:
        args = ", ".join([*map(repr, self.args), *(f"{k}={v!r}" for k, v in self.kwargs.items())])
        return f"{self.task}{'i' if self.immutable else ''}({args})"

    def __hash__(self) -> int:
        return hash((self.task, self.args))

    @property
    def id(self) -> str | None:
        task_id = self.options.get("task_id")
        return str(task_id) if task_id is not None else None

    def clone(
        self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Self:
        """A copy with ``args`` prepended (unless immutable), ``kwargs`` and options merged."""
        new_args = self.args if self.immutable else (*args, *self.args)
        return type(self)(
            self.task,
            new_args,
            {**self.kwargs, **(kwargs or {})},
            {**copy_options(self.options), **options},
            self.immutable,
            self._app,
        )

    def assign_ids(self, want: str | None = None) -> None:
        if want is not None:
            self.options["task_id"] = want
        self.options.setdefault("task_id", str(uuid.uuid4()))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form carried inside messages (``link``, ``link_error``, chains, chords)."""
        return {
            "task": self.task,
            "args": list(self.args),
            "kwargs": self.kwargs,
            "options": _options_dict(self.options),
            "immutable": self.immutable,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], app: Aqueue | None = None) -> Signature:
        """Inverse of :meth:`to_dict` (for any canvas dict, use :func:`from_dict`)."""
        return cls(
            data["task"],
            tuple(data.get("args", ())),
            data.get("kwargs") or {},
            data.get("options") or {},
            bool(data.get("immutable")),
            app,
        )

    async def apply_async(  # a task call has one result
        self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> AsyncResult[Any]:
        """Send it with extra arguments and options merged in.

        Raises:
            ConfigurationError: the signature has no app (build it with ``task.s()``).
        """
        app = self.require_app()
        sig = self.clone(args, kwargs, **options)
        return await app.send_task(sig.task, sig.args, sig.kwargs, **sig.options)

    async def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[Any]:
        """Send it; ``args`` are prepended to the signature's own unless it is immutable."""
        return await self.apply_async(args, kwargs)


class _Tasks(Canvas):
    """A chain or a group: canvases in order (:attr:`tasks`) and options of its own."""

    tasks: list[Canvas]
    subtask_type: ClassVar[str]

    def __init__(self, *tasks: Any, app: Aqueue | None = None, **options: Any) -> None:
        self.tasks = self._flatten(_unpack(tasks))
        self.options = options
        self._app = app

    @staticmethod
    def _flatten(tasks: list[Canvas]) -> list[Canvas]:
        return tasks

    @property
    def app(self) -> Aqueue | None:
        return self._app or _first_app(self.tasks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "subtask_type": self.subtask_type,
            "tasks": [t.to_dict() for t in self.tasks],
            "options": _options_dict(self.options),
        }


class chain(_Tasks):  # lower case: Celery's name
    """Tasks run one after another, each result prepended to the next one's arguments.

    ``chain(a, b, c)``, ``chain([a, b, c])`` and ``a | b | c`` are the same. A group inside a
    chain (not at its end) becomes a chord with the rest of the chain as its body.

    Options given to the chain apply to its first task, except ``link`` (after the last task)
    and ``link_error`` (on every task), as in Celery.
    """

    subtask_type: ClassVar[str] = "chain"

    @staticmethod
    def _flatten(tasks: list[Canvas]) -> list[Canvas]:
        steps: list[Canvas] = []
        for task in tasks:
            # Nested chains without options of their own are the same chain: flatten them.
            if isinstance(task, chain) and not task.options:
                steps.extend(task.tasks)
            else:
                steps.append(task)
        return steps

    def __repr__(self) -> str:
        return " | ".join(map(repr, self.tasks)) or "chain()"

    @property
    def id(self) -> str | None:
        return self.tasks[-1].id if self.tasks else None

    def clone(
        self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Self:
        """A copy whose first task gets the partial ``args``/``kwargs``."""
        steps = [t.clone() for t in self.tasks]
        if steps and (args or kwargs):
            steps[0] = steps[0].clone(args, kwargs)
        new = type(self)(app=self._app, **{**copy_options(self.options), **options})
        new.tasks = steps
        return new

    def assign_ids(self, want: str | None = None) -> None:
        if not self.tasks:
            return
        want = self.options.pop("task_id", None) or want
        for step in self.tasks[:-1]:
            step.assign_ids()
        self.tasks[-1].assign_ids(want)

    async def __call__(self, *args: Any, **kwargs: Any) -> AsyncResult[Any] | GroupResult:
        """Send it (Celery's ``chain(...)()``): same as :meth:`delay`."""
        return await self.apply_async(args, kwargs)


class group(_Tasks):  # lower case: Celery's name
    """Tasks run in parallel; the result is a GroupResult whose value is the list of results.

    ``group(a, b)``, ``group([a, b])`` and ``group(a.s(i) for i in ...)`` are the same. A group
    inside a group is flattened into it (as in Celery). Options given to the group apply to each
    member that does not set them itself; ``task_id`` names the group.
    """

    subtask_type: ClassVar[str] = "group"

    @staticmethod
    def _flatten(tasks: list[Canvas]) -> list[Canvas]:
        members: list[Canvas] = []
        for task in tasks:
            if isinstance(task, group):
                for inner in task.tasks:
                    members.append(_with_defaults(inner.clone(), task.options))
            else:
                members.append(task)
        return members

    def __repr__(self) -> str:
        return f"group([{', '.join(map(repr, self.tasks))}])"

    @property
    def id(self) -> str | None:
        group_id = self.options.get("task_id")
        return str(group_id) if group_id is not None else None

    def clone(
        self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Self:
        """A copy whose members each get the partial ``args``/``kwargs``."""
        new = type(self)(app=self._app, **{**copy_options(self.options), **options})
        new.tasks = [t.clone(args, kwargs) for t in self.tasks]
        return new

    def assign_ids(self, want: str | None = None) -> None:
        if want is not None:
            self.options["task_id"] = want
        self.options.setdefault("task_id", str(uuid.uuid4()))
        for task in self.tasks:
            task.assign_ids()

    async def apply_async(  # a group: a GroupResult
        self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> GroupResult:
        from aqueue.results.group import GroupResult

        result = await super().apply_async(args, kwargs, **options)
        if not isinstance(result, GroupResult):  # pragma: no cover - dispatch guarantees it
            raise TypeError(f"a group gave {result!r}")
        return result

    async def delay(self, *args: Any, **kwargs: Any) -> GroupResult:
        return await self.apply_async(args, kwargs)

    async def __call__(self, *args: Any, **kwargs: Any) -> GroupResult:
        """Send it (Celery's ``group(...)()``): same as :meth:`delay`."""
        return await self.apply_async(args, kwargs)


class chord(Canvas):  # lower case: Celery's name
    """A group (the *header*) whose list of results is passed to a *body*, run exactly once.

    ``chord(header, body)``, ``chord(header)(body)`` (sends at once, as in Celery) and
    ``group(...) | body`` are the same. The body runs as soon as the last header task has stored
    its result: the worker that completes the header triggers it through one atomic operation in
    the result backend, with no polling and no extra task (see :mod:`aqueue.worker.workflow`).
    If a header task fails the body does not run: the chord's result fails with
    :class:`~aqueue.exceptions.ChordError` naming that task, and the body's ``link_error``
    callbacks run. Options given to the chord apply to each header task; ``link`` and
    ``link_error`` go to the body.
    """

    def __init__(
        self,
        header: Any,
        body: Canvas | None = None,
        app: Aqueue | None = None,
        **options: Any,
    ) -> None:
        self.header = header if isinstance(header, group) else group(header)
        self.body = body
        self.options = options
        self._app = app

    @property
    def app(self) -> Aqueue | None:
        return self._app or self.header.app or (self.body.app if self.body else None)

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.body!r})"

    @property
    def id(self) -> str | None:
        return self.body.id if self.body is not None else self.header.id

    def clone(
        self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Self:
        """A copy whose header members each get the partial ``args``/``kwargs``."""
        return type(self)(
            self.header.clone(args, kwargs),
            self.body.clone() if self.body is not None else None,
            app=self._app,
            **{**copy_options(self.options), **options},
        )

    def assign_ids(self, want: str | None = None) -> None:
        want = self.options.pop("task_id", None) or want
        self.header.assign_ids()
        if self.body is not None:
            self.body.assign_ids(want)

    def to_dict(self) -> dict[str, Any]:
        return {
            "subtask_type": "chord",
            "header": self.header.to_dict(),
            "body": self.body.to_dict() if self.body is not None else None,
            "options": _options_dict(self.options),
        }

    async def __call__(
        self, body: Canvas | None = None, **options: Any
    ) -> AsyncResult[Any] | GroupResult:
        """Send the chord with ``body`` (Celery's ``chord(header)(body)``); return its result."""
        target = self if body is None else chord(self.header, body, self._app, **self.options)
        return await target.apply_async(**options)


# -- map, starmap, chunks --------------------------------------------------------------------


def xmap(task: Task[Any, Any], it: Iterable[Any]) -> Signature:
    """One message that calls ``task(item)`` for each item in turn; its value is the list.

    Celery's ``task.map(it)``: one worker runs every call, one after another (use a group to
    spread them over workers).
    """
    return _builtin(MAP_TASK, task, [item for item in it])


def xstarmap(task: Task[Any, Any], it: Iterable[Iterable[Any]]) -> Signature:
    """One message that calls ``task(*item)`` for each item in turn; its value is the list."""
    return _builtin(STARMAP_TASK, task, [list(item) for item in it])


def chunks(task: Task[Any, Any], it: Iterable[Iterable[Any]], n: int) -> group:
    """A group of :func:`xstarmap` signatures over ``n`` items each; its value is a list of lists.

    Raises:
        ConfigurationError: ``n`` is not a whole number >= 1.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigurationError(f"chunks(it, n) needs a whole number n >= 1, not {n!r}")
    items = [list(item) for item in it]
    return group(
        [xstarmap(task, items[start : start + n]) for start in range(0, len(items), n)],
        app=task.app,
    )


def _builtin(name: str, task: Task[Any, Any], items: list[Any]) -> Signature:
    options = {"queue": task.queue} if task.queue else {}
    return Signature(name, (items,), {"task": task.name}, options, app=task.app)


# -- from and to data ------------------------------------------------------------------------


def from_dict(data: dict[str, Any], app: Aqueue | None = None) -> Canvas:
    """Rebuild any canvas object from its :meth:`Canvas.to_dict` form.

    Raises:
        ConfigurationError: ``data`` is not a signature dict.
    """
    kind = data.get("subtask_type")
    options = dict(data.get("options") or {})
    if kind is None:
        if "task" not in data:
            raise ConfigurationError(f"not a signature: {data!r}")
        return Signature.from_dict(data, app)
    if kind == "chain":
        return chain([from_dict(t, app) for t in data["tasks"]], app=app, **options)
    if kind == "group":
        return group([from_dict(t, app) for t in data["tasks"]], app=app, **options)
    if kind == "chord":
        body = data.get("body")
        return chord(
            from_dict(data["header"], app),
            from_dict(body, app) if body is not None else None,
            app,
            **options,
        )
    raise ConfigurationError(f"unknown canvas type {kind!r} in {data!r}")


@overload
def signature(
    task: str,
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: dict[str, Any] | None = None,
    app: Aqueue | None = None,
    **options: Any,
) -> Signature: ...
@overload
def signature(
    task: Canvas | dict[str, Any],
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: dict[str, Any] | None = None,
    app: Aqueue | None = None,
    **options: Any,
) -> Canvas: ...


def signature(
    task: str | Canvas | dict[str, Any],
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: dict[str, Any] | None = None,
    app: Aqueue | None = None,
    **options: Any,
) -> Canvas:
    """Build a signature by task name (``signature("proj.add", args=(2, 2), countdown=1)``),
    or copy one / rebuild one (of any kind) from its dict form."""
    if isinstance(task, Canvas):
        return task.clone()
    if isinstance(task, dict):
        return from_dict(task, app)
    return Signature(task, args, kwargs, options, app=app)


def _unpack(tasks: tuple[Any, ...]) -> list[Canvas]:
    # chain(a, b), chain([a, b]) and chain(generator) are the same.
    if len(tasks) == 1 and not isinstance(tasks[0], Canvas | dict):
        tasks = tuple(tasks[0])
    out: list[Canvas] = []
    for task in tasks:
        if isinstance(task, dict):
            task = from_dict(task)
        if not isinstance(task, Canvas):
            raise ConfigurationError(f"expected a signature (task.s(...)), not {task!r}")
        out.append(task)
    return out


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def callbacks(value: Any, app: Aqueue | None, what: str = "link") -> list[Signature]:
    """A ``link`` or ``link_error`` option (``None``, one signature or its dict, or a list of
    them) as signatures.

    Raises:
        ConfigurationError: an item is not a task signature (a chain, a group, anything else);
            the message starts with ``what``.
    """
    found: list[Signature] = []
    for item in _as_list(value):
        if isinstance(item, Signature):
            found.append(item)
        elif isinstance(item, dict) and "task" in item:
            found.append(Signature.from_dict(item, app))
        else:
            raise ConfigurationError(f"{what} takes task signatures (task.s(...)), not {item!r}")
    return found


def _first_app(tasks: list[Canvas]) -> Aqueue | None:
    for task in tasks:
        if task.app is not None:
            return task.app
    return None


def _with_defaults(task: Canvas, defaults: dict[str, Any]) -> Canvas:
    for key, value in copy_options(defaults).items():
        if key != "task_id":
            task.options.setdefault(key, value)
    return task


def _options_dict(options: dict[str, Any]) -> dict[str, Any]:
    # link/link_error may hold Signature objects (sig.link(cb)); messages carry their dicts.
    out = dict(options)
    for key in ("link", "link_error"):
        value = out.get(key)
        if value is None:
            continue
        items = value if isinstance(value, list | tuple) else [value]
        out[key] = [item.to_dict() if isinstance(item, Canvas) else item for item in items]
    return out


def copy_options(options: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of send options, where signatures (``link``...) are cloned, not deep-copied.

    A signature holds its app (connections, locks, loops), which must be shared, not copied.
    """
    out: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, Canvas):
            out[key] = value.clone()
        elif isinstance(value, list | tuple):
            out[key] = [v.clone() if isinstance(v, Canvas) else copy.deepcopy(v) for v in value]
        else:
            out[key] = copy.deepcopy(value)
    return out
