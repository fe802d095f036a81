"""Tasks: a function registered with an app, callable in-process or sent to a worker.

``@app.task`` turns a function into a :class:`Task`. Calling the task runs the function here, as in
Celery; ``await task.delay(...)`` publishes a message and returns an
:class:`~aqueue.results.result.AsyncResult`. ``Task[P, R]`` keeps the function's parameters
(``P``) and its result type (``R``, the awaited value for ``async def``), so a type checker checks
``delay``.

Subclass :class:`Task` and pass ``base=`` to hook into outcomes: ``on_success``, ``on_failure``,
``on_retry`` and ``after_return`` may be plain or ``async`` methods.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, Unpack

from aqueue import serialization
from aqueue.canvas.primitives import Signature, group, xmap, xstarmap
from aqueue.canvas.primitives import chunks as canvas_chunks
from aqueue.exceptions import ArgumentsError, ConfigurationError, MaxRetriesExceededError, Retry
from aqueue.sending.options import SendOptions, epoch_value, seconds_value

if TYPE_CHECKING:
    from aqueue.app import Aqueue
    from aqueue.results.result import AsyncResult

P = ParamSpec("P")
R = TypeVar("R")
#: The positional and keyword arguments of one call, as the outcome hooks receive them.
Args = tuple[Any, ...]
Kwargs = dict[str, Any]


@dataclass(slots=True)
class Request:
    """The message a task is running for, as ``self.request`` in a ``bind=True`` task.

    Attributes follow Celery's ``Task.request``: ``id``, ``task`` (name), ``args``, ``kwargs``,
    ``retries``, ``queue``, ``priority``, ``eta`` and ``expires`` (epoch seconds or ``None``),
    ``headers``, ``delivery_count`` (1 unless the message was delivered again), ``hostname``
    (the worker's), ``parent_id``, ``root_id``, ``group_id``, ``time_limit`` (seconds),
    ``is_eager`` (run inline by ``task_always_eager``), ``called_directly`` (``task(...)``),
    ``reply_to`` (the sender's reply channel, where this task's records also go, or ``None``),
    and aqueue's ``sent_at`` (when the message was sent, epoch seconds, or ``None``) and
    ``dependencies`` (the results of the tasks it was sent ``after=``, in that order, else
    ``None``; docs/tasks.md).
    """

    id: str | None = None
    task: str | None = None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    retries: int = 0
    queue: str | None = None
    priority: int = 0
    eta: float | None = None
    expires: float | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    delivery_count: int = 1
    hostname: str | None = None
    parent_id: str | None = None
    root_id: str | None = None
    group_id: str | None = None
    time_limit: float | None = None
    is_eager: bool = False
    called_directly: bool = True
    reply_to: str | None = None
    sent_at: float | None = None
    dependencies: list[Any] | None = None


current_request: ContextVar[Request | None] = ContextVar("aqueue_request", default=None)

# Options a task takes from the decorator, a base class attribute or task_annotations.


class Task(Generic[P, R]):
    """A registered task. Made by ``@app.task``; subclass it for ``base=``.

    Class attributes are the defaults of a task's options; the decorator's keyword arguments
    override them, and ``task_annotations`` override both.

    Attributes:
        name: the registered name (default ``module.function``).
        max_retries: retries allowed before ``self.retry`` gives up (``None``: no limit; default
            the ``task_max_retries`` setting, 3).
        default_retry_delay: seconds before a retry without ``countdown`` (default 180).
        retry_backoff: with ``autoretry_for``: ``True`` or a base in seconds for exponential
            backoff ``base * 2**retries`` (capped by ``retry_backoff_max``, 600 s, and randomised
            in ``[0, delay]`` when ``retry_jitter``, as in Celery).
        autoretry_for: exception types that retry the task automatically.
        retry_kwargs: options for automatic retries, e.g. ``{"max_retries": 5, "countdown": 2}``.
        time_limit: seconds a run may take before it is cancelled with ``TimeLimitExceeded``.
        rate_limit: e.g. ``"10/m"``; enforced by the worker.
        queue, priority: where and how urgently it is sent by default.
        ignore_result: store no result.
        acks_late: ack after the task finishes (default ``task_acks_late``, True).
        serializer, compression: how arguments are encoded (default the app's settings).
        typing: check a call's arguments against the function's signature before sending it
            (default True, as Celery's ``typing``); ``False`` sends any arguments, and the
            worker refuses a call that does not fit.
        unique, unique_key, unique_ttl: one call per key at a time (docs/tasks.md, "Unique
            tasks"): ``unique`` is ``True``/``"running"`` (locked until the run ends) or
            ``"queued"`` (until it starts); ``unique_key(*args, **kwargs)`` makes the key
            (default: the arguments); ``unique_ttl`` bounds a queued call's lock (seconds).
        batch_size, batch_timeout: with ``batch_size`` set, the worker calls the function
            with up to ``batch_size`` queued calls at once, as a list of :class:`Request`,
            after waiting at most ``batch_timeout`` seconds (default 1.0) for a batch to fill
            (:mod:`aqueue.worker.batch`; docs/tasks.md "Batching").
        soft_deadline: seconds a run may take before the worker reports it as slow (a log
            line, a ``task-slow`` event, the ``task_slow`` signal) without stopping it
            (default the ``task_soft_deadline`` setting; docs/tasks.md "Slow and stuck tasks").
        stream_max_items: the most items an async-generator task may yield (default 10,000):
            each is stored until the result expires, for late readers of ``r.stream()``.
    """

    name: str = ""
    max_retries: int | None = None
    default_retry_delay: float | None = None
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600.0
    retry_jitter: bool = True
    autoretry_for: tuple[type[BaseException], ...] = ()
    retry_kwargs: dict[str, Any] | None = None
    time_limit: float | None = None
    rate_limit: str | None = None
    queue: str | None = None
    priority: int | None = None
    ignore_result: bool | None = None
    acks_late: bool | None = None
    serializer: str | None = None
    compression: str | None = None
    track_started: bool | None = None
    expires: float | None = None
    typing: bool = True
    unique: bool | str = False
    unique_key: Callable[..., str] | None = None
    unique_ttl: float | None = None
    batch_size: int | None = None
    batch_timeout: float = 1.0
    soft_deadline: float | None = None
    stream_max_items: int = 10_000

    def __init__(
        self,
        app: Aqueue,
        fn: Callable[..., Any],
        name: str,
        bind: bool = False,
        **options: Any,
    ) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.bind = bind
        self.is_async = inspect.iscoroutinefunction(fn)
        # An async generator function: its items are streamed (aqueue.results.stream).
        self.is_stream = inspect.isasyncgenfunction(fn)
        for key, value in options.items():
            setattr(self, key, value)
        _check_worker_options(self)
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", name)
        self.__module__ = getattr(fn, "__module__", "")
        self.__wrapped__ = fn
        self._signature = inspect.signature(fn)
        self._positional = _positional_range(self._signature)
        # Positions of the parameters a keyword can fill (the task itself is 0 with bind=True).
        self._index = {
            p.name: at
            for at, p in enumerate(self._signature.parameters.values())
            if p.kind is p.POSITIONAL_OR_KEYWORD
        }
        # Lists back to the tuples (NamedTuples, sets, Enum members) the parameters annotate.
        self._coerce = serialization.argument_coercer(fn, skip_first=bind)

    def __repr__(self) -> str:
        return f"<task {self.name}>"

    # -- calling -----------------------------------------------------------------------------

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Run the function here and now (a coroutine for ``async def``), as Celery does.

        Arguments whose JSON form differs from their annotation get it back first: a list for a
        ``tuple[...]`` parameter becomes a tuple, a value for an ``Enum`` one its member (see
        :func:`aqueue.serialization.argument_coercer`).
        """
        if self._coerce is not None:
            args, kwargs = self._coerce(args, kwargs)  # type: ignore[assignment]
        if self.bind:
            return self.fn(self, *args, **kwargs)
        return self.fn(*args, **kwargs)

    def check_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Check that ``args``/``kwargs`` fit the function's signature, as calling it would.

        A function of plain parameters (no ``*args``, ``**kwargs`` or keyword-only ones) is
        checked by counting (about 0.1 µs; 0.3 µs with keywords); any other by
        :meth:`inspect.Signature.bind` (about 2 µs).

        Raises:
            ArgumentsError: they do not fit (a ``TypeError`` too); the message names the task,
                its parameters and what is wrong, e.g. ``proj.add(x, y): missing a required
                argument: 'y'``.
        """
        if self.batch_size is not None:
            return  # a batch task's function takes the calls' list; each call is its own
        span = self._positional
        if span is not None:
            given = len(args) + (1 if self.bind else 0)
            if not kwargs:
                if span[0] <= given <= span[1]:
                    return
            elif given <= span[1] and self._keywords_fit(given, span[0], kwargs):
                return
        try:
            if self.bind:
                self._signature.bind(self, *args, **kwargs)
            else:
                self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise ArgumentsError(f"{self.name}{self._shown_parameters()}: {exc}") from None

    def _keywords_fit(self, given: int, required: int, kwargs: dict[str, Any]) -> bool:
        """True when ``kwargs`` name only parameters after the ``given`` positional ones and,
        with them, every one of the ``required`` first parameters has a value (plain
        parameters only). False sends the call to the full check, which says what is wrong."""
        missing = required - given
        index = self._index
        for key in kwargs:
            at = index.get(key)
            if at is None or at < given:
                return False
            if at < required:
                missing -= 1
        return missing <= 0

    def _shown_parameters(self) -> str:
        """The parameters a caller passes, without annotations: ``(x, y, z=0)``."""
        params = list(self._signature.parameters.values())[1 if self.bind else 0 :]
        plain = [p.replace(annotation=p.empty) for p in params]
        return str(inspect.Signature(plain))

    @property
    def request(self) -> Request:
        """The message being run by the current task invocation (a blank one outside a worker)."""
        return current_request.get() or Request(task=self.name)

    # -- sending -----------------------------------------------------------------------------

    async def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Publish a call with these arguments; shortcut for ``apply_async(args, kwargs)``.

        Raises:
            ArgumentsError: the arguments do not fit the task's signature (a ``TypeError``;
                nothing is sent; ``@app.task(typing=False)`` skips the check).
            BrokerConnectionError: the broker cannot be reached.
            EncodeError: the arguments cannot be serialised.
        """
        app = self.app
        kind = type(app)
        if type(self).apply_async is Task.apply_async and kind.send_task is kind._plain_send_task:
            # What apply_async(args, kwargs) does, two coroutine layers shorter (a web app's one
            # call per request, each layer alive until the publish is answered); a subclass's
            # own apply_async or send_task (Celery's way to customise sending) still sees it.
            return await app.sender.send(self.name, args, kwargs, self, {})
        return await self.apply_async(args, kwargs)

    async def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Unpack[SendOptions],
    ) -> AsyncResult[R]:
        """Publish a call with options (:class:`~aqueue.sending.SendOptions`); see
        :meth:`aqueue.app.Aqueue.send_task` for them all.

        Returns:
            The result handle; ``await`` it for the return value.

        Raises:
            ArgumentsError: the arguments do not fit the task's signature (a ``TypeError``;
                nothing is sent; ``@app.task(typing=False)`` skips the check).
            BrokerConnectionError: the broker cannot be reached.
            EncodeError: the arguments cannot be serialised.
            ConfigurationError: an option is invalid (e.g. priority outside 0..9).
        """
        return await self.app.send_task(self.name, args, kwargs, _task=self, **options)

    async def delay_many(
        self, arguments: Iterable[Iterable[Any]], **options: Unpack[SendOptions]
    ) -> list[AsyncResult[R]]:
        """Publish one call per item of ``arguments`` (positional arguments), in one broker
        round trip: ``await add.delay_many([(1, 2), (3, 4)])``. See
        :meth:`aqueue.app.Aqueue.send_many` for the options and errors.
        """
        return await self.app.send_many(self.name, arguments, _task=self, **options)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature of this task with partial arguments (a parent's result is prepended)."""
        return Signature(self.name, args, kwargs, app=self.app)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: a parent's result is not passed to it."""
        return Signature(self.name, args, kwargs, immutable=True, app=self.app)

    def signature(
        self, args: Any = (), kwargs: Any = None, **options: Unpack[SendOptions]
    ) -> Signature:
        """A signature with options, e.g. ``add.signature((2, 2), countdown=10)``."""
        return Signature(self.name, tuple(args), dict(kwargs or {}), dict(options), app=self.app)

    def map(self, it: Iterable[Any]) -> Signature:
        """One message calling this task for each item in turn: ``tsum.map([[1, 2], [3]])``."""
        return xmap(self, it)

    def starmap(self, it: Iterable[Iterable[Any]]) -> Signature:
        """One message calling this task with each item as its arguments, in turn."""
        return xstarmap(self, it)

    def chunks(self, it: Iterable[Iterable[Any]], n: int) -> group:
        """A group of starmaps over ``n`` items each; its value is a list of lists."""
        return canvas_chunks(self, it, n)

    # -- inside a running task ---------------------------------------------------------------

    async def update_state(
        self, task_id: str | None = None, state: str = "PROGRESS", meta: Any = None
    ) -> None:
        """Store a custom state (e.g. ``"PROGRESS"``) with ``meta`` for the running task.

        Waiting clients see it at once through ``get(on_message=...)`` and ``state()``.

        Raises:
            ConfigurationError: there is no result backend, or no task id is known.
        """
        await self.app.store_state(task_id or self.request.id, state, meta, name=self.name)

    def retry(
        self,
        exc: BaseException | None = None,
        countdown: float | None = None,
        eta: datetime | float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Retry:
        """Build the :class:`Retry` to raise: ``raise self.retry(exc=e, countdown=2)``.

        The worker publishes the task again with ``retries + 1`` after ``countdown`` seconds (or at
        ``eta``; default ``default_retry_delay``) and stores state RETRY. ``eta`` is read as
        ``apply_async`` reads it: a naive datetime is UTC, a number is epoch seconds.

        Raises:
            ConfigurationError: ``countdown`` or ``eta`` is not a finite time (``nan`` would
                run the task again at once).
            MaxRetriesExceededError: the task has already used ``max_retries`` retries and no
                ``exc`` was given, as in Celery.
            Exception: the original ``exc``, when the task has already used ``max_retries``
                retries.
        """
        limit = max_retries if max_retries is not None else self.effective_max_retries()
        request = self.request
        if limit is not None and request.retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"{self.name}[{request.id}] has used all of its max_retries={limit}"
            )
        when: float | datetime
        if eta is not None:
            # The worker takes when.timestamp(): a naive datetime would be local time there.
            when = datetime.fromtimestamp(epoch_value(eta, "eta") or 0.0, UTC)
        elif countdown is not None:
            when = seconds_value(countdown, "countdown")
        else:
            when = self.effective_retry_delay()
        return Retry(exc=exc, when=when, **options)

    def effective_max_retries(self) -> int | None:
        """``max_retries`` if set on the task, else the app's ``task_max_retries``."""
        if "max_retries" in vars(self) or type(self).max_retries is not None:
            return self.max_retries
        return self.app.conf.task_max_retries

    def effective_retry_delay(self) -> float:
        """``default_retry_delay`` if set, else the app's ``task_default_retry_delay`` seconds."""
        if self.default_retry_delay is not None:
            return float(self.default_retry_delay)
        return float(self.app.conf.task_default_retry_delay)

    def backoff_delay(self, retries: int) -> float:
        """Seconds before automatic retry number ``retries + 1`` (see ``retry_backoff``)."""
        if not self.retry_backoff:
            countdown = (self.retry_kwargs or {}).get("countdown")
            return float(countdown) if countdown is not None else self.effective_retry_delay()
        base = 1.0 if self.retry_backoff is True else float(self.retry_backoff)
        delay = min(base * (2**retries), float(self.retry_backoff_max))
        return random.uniform(0, delay) if self.retry_jitter else delay

    # -- outcome hooks (override in a base class; may be async) ------------------------------

    def on_success(self, retval: Any, task_id: str, args: Args, kwargs: Kwargs) -> Any:
        """Called by the worker after the task returned ``retval``."""

    def on_failure(
        self, exc: BaseException, task_id: str, args: Args, kwargs: Kwargs, einfo: str
    ) -> Any:
        """Called by the worker after the task failed; ``einfo`` is the formatted traceback."""

    def on_retry(
        self, exc: BaseException, task_id: str, args: Args, kwargs: Kwargs, einfo: str
    ) -> Any:
        """Called by the worker when the task is to be retried."""

    def after_return(
        self,
        status: str,
        retval: Any,
        task_id: str,
        args: Args,
        kwargs: Kwargs,
        einfo: str | None,
    ) -> Any:
        """Called by the worker after every run, whatever its outcome (``status``)."""


def _check_worker_options(task: Task[Any, Any]) -> None:
    """Check the values of ``batch_size``, ``batch_timeout``, ``soft_deadline`` and
    ``stream_max_items``.

    Raises:
        ConfigurationError: a value out of range, or a batch task that is an async generator.
    """
    size, timeout = task.batch_size, task.batch_timeout
    if size is not None and (type(size) is not int or size < 1):
        raise ConfigurationError(f"{task.name}: batch_size must be a positive int, not {size!r}")
    if not isinstance(timeout, int | float) or timeout <= 0:
        raise ConfigurationError(f"{task.name}: batch_timeout must be seconds > 0, not {timeout!r}")
    if size is not None and task.is_stream:
        raise ConfigurationError(
            f"{task.name}: a batch task cannot be an async generator (streaming is per call)"
        )
    deadline = task.soft_deadline
    if deadline is not None and (not isinstance(deadline, int | float) or deadline <= 0):
        raise ConfigurationError(
            f"{task.name}: soft_deadline must be seconds > 0 or None, not {deadline!r}"
        )
    limit = task.stream_max_items
    if type(limit) is not int or limit < 1:
        raise ConfigurationError(
            f"{task.name}: stream_max_items must be a positive int, not {limit!r}"
        )


def _positional_range(sig: inspect.Signature) -> tuple[int, int] | None:
    """(required, total) positional parameters, or ``None`` unless every parameter is a plain
    one (positional, or positional or keyword): a signature :meth:`Task.check_arguments` can
    check by counting."""
    required = total = 0
    for param in sig.parameters.values():
        if param.kind not in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            return None
        total += 1
        if param.default is param.empty:
            required += 1
    return required, total
