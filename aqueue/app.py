"""The app: settings, the task registry, and the connections used to send and await tasks."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Literal,
    ParamSpec,
    Protocol,
    TypeVar,
    Unpack,
    overload,
)

from aqueue import discovery
from aqueue.beat import entry as beat_entry
from aqueue.beat.control import BeatControl
from aqueue.canvas import builtin as builtin_tasks
from aqueue.canvas.primitives import Signature
from aqueue.config import Settings, caller_directory
from aqueue.control.client import Control
from aqueue.exceptions import ConfigurationError
from aqueue.message import Message
from aqueue.middleware import Middleware
from aqueue.perloop import PerLoop
from aqueue.results.group import GroupResult as _GroupResult
from aqueue.results.record import ResultRecord
from aqueue.results.result import AsyncResult as _AsyncResult
from aqueue.sending import routing
from aqueue.sending.options import (
    TASK_OPTIONS,
    AnyRetryPolicy,
    SendOptions,
    TaskOptions,
    check_task_options,
)
from aqueue.sending.sender import Sender
from aqueue.sending.unique import check_unique_options
from aqueue.task import Task, current_request
from aqueue.transports import (
    BeatStore,
    Broker,
    ControlTransport,
    ResultBackend,
    Transport,
    transport_for,
    transport_type,
)
from aqueue.transports.rpc import is_rpc, rpc_cannot, rpc_server

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
L = TypeVar("L", bound="LifespanFunction")

if TYPE_CHECKING:
    from aqueue.worker.lifespan import Lifespan, LifespanFunction

logger = logging.getLogger("aqueue.app")


class _TaskDecorator(Protocol):
    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]]) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, AsyncIterator[R]]) -> Task[P, list[R]]: ...
    @overload
    def __call__(self, fn: Callable[P, R]) -> Task[P, R]: ...


class _BoundTaskDecorator(Protocol):
    @overload
    def __call__(self, fn: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]]) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[Concatenate[Any, P], AsyncIterator[R]]) -> Task[P, list[R]]: ...
    @overload
    def __call__(self, fn: Callable[Concatenate[Any, P], R]) -> Task[P, R]: ...


@dataclass
class _Connections:
    """What an app holds open in one event loop."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    transports: dict[str, Transport] = field(default_factory=dict)  # by URL
    broker: Broker | None = None
    backend: ResultBackend | None = None
    control: ControlTransport | None = None


class Aqueue:
    """An aqueue application: create one per project and register tasks on it.

    Args:
        main: the app's name (used in logs), e.g. ``"proj"``.
        broker: broker URL; default ``$AQUEUE_BROKER_URL``, else ``aqueue.db`` in the directory
            of the module that makes the app (the working directory's where it has no file). Or a
            :class:`~aqueue.transports.Broker` instance configured by the caller (as httpx
            takes a transport), used as is in every event loop; its ``url`` then stands for
            the broker URL (remote control goes over that server).
        backend: result backend URL; default ``$AQUEUE_RESULT_BACKEND``, else the broker's URL
            when the broker can store results, else none (AMQP). Or a
            :class:`~aqueue.transports.ResultBackend` instance, likewise.
        include: modules that define tasks for this app (Celery's ``include=``), imported at
            the first read of :attr:`tasks` (a worker reads it when it starts), so they may
            import this app's module.
        middleware: wrappers around publishing and running tasks, the first outermost
            (:mod:`aqueue.middleware`); more with :meth:`add_middleware`.
        **settings: any setting, by its lowercase name (see :class:`aqueue.config.Settings`).

    Raises:
        ConfigurationError: a URL or setting is invalid.

    Connections open on first use in each event loop, so one app serves a web app's loop, a
    test's loop and a worker's loop alike. Call ``await app.close()`` when done.
    """

    def __init__(
        self,
        main: str | None = None,
        *,
        broker: str | Broker | None = None,
        backend: str | ResultBackend | None = None,
        include: Iterable[str] = (),
        middleware: Iterable[Middleware] = (),
        **settings: Any,
    ) -> None:
        self.main = main or "aqueue"
        #: The middleware chain, outermost first (:mod:`aqueue.middleware`).
        self.middleware: list[Middleware] = list(middleware)
        self.conf = Settings()
        # The embedded default database sits beside the module that made this app, the same
        # file for every process that imports it, whatever its working directory.
        self.conf.locate_default(caller_directory())
        self._broker_instance: Broker | None = None
        self._backend_instance: ResultBackend | None = None
        if isinstance(broker, str):
            settings["broker_url"] = broker
        elif broker is not None:
            self._broker_instance = _instance(broker, Broker, "broker")
            settings["broker_url"] = broker.url
        if isinstance(backend, str):
            settings["result_backend"] = backend
        elif backend is not None:
            self._backend_instance = _instance(backend, ResultBackend, "backend")
            settings["result_backend"] = backend.url
        self.conf.update(settings)
        self._tasks: dict[str, Task[Any, Any]] = {}
        # Imports of include= and autodiscover_tasks(), done at the first read of `tasks`.
        self._pending: list[Callable[[], None]] = []
        self._importing = False
        if include:
            self._pending.append(functools.partial(discovery.import_modules, tuple(include)))
        #: Builds and publishes this app's messages (:class:`aqueue.sending.Sender`).
        self.sender = Sender(self)
        self._connections: PerLoop[_Connections] = PerLoop(_Connections)
        self._memory: dict[str, Transport] = {}  # transports shared by every loop, by URL
        self._background: set[asyncio.Task[Any]] = set()
        self._worker_lifespan: Lifespan | None = None  # @app.worker_lifespan
        builtin_tasks.register(self)  # aqueue.map, aqueue.starmap (task.map / task.starmap)

    def __repr__(self) -> str:
        return f"<Aqueue {self.main}>"

    def add_middleware(self, middleware: Middleware) -> None:
        """Add ``middleware`` inside those added before (it runs after them on the way in).

        Raises:
            TypeError: ``middleware`` is not a :class:`~aqueue.middleware.Middleware`.
        """
        if not isinstance(middleware, Middleware):
            raise TypeError(
                f"middleware must be an aqueue.middleware.Middleware, not {middleware!r}"
            )
        self.middleware.append(middleware)

    # -- configuration -----------------------------------------------------------------------

    def config_from_object(self, obj: object | str) -> None:
        """Load settings from a module path (``"proj.config"``), a module or an object.

        Raises:
            ConfigurationError: the module cannot be imported or a setting is wrong.
        """
        self.conf.from_object(obj)

    @property
    def accept_results(self) -> frozenset[str]:
        """Content types readable in results: ``accept_content`` and ``result_serializer``."""
        return frozenset((*self.conf.accept_content, self.conf.result_serializer))

    # -- tasks -------------------------------------------------------------------------------

    @property
    def tasks(self) -> dict[str, Task[Any, Any]]:
        """The registry, task name -> task. Its first read imports the modules of ``include=``
        and :meth:`autodiscover_tasks` (as Celery's app finalization does).

        Raises:
            ConfigurationError: such a module is not found, or its import failed.
        """
        if self._pending and not self._importing:
            self._importing = True  # a module being imported may read the registry too
            try:
                while self._pending:
                    self._pending[0]()  # a failed import stays pending: the next read retries
                    self._pending.pop(0)
            finally:
                self._importing = False
        return self._tasks

    def autodiscover_tasks(
        self,
        packages: Iterable[str] | Callable[[], Iterable[str]] | None = None,
        related_name: str = "tasks",
        force: bool = False,
    ) -> None:
        """Import ``<package>.tasks`` of each package, as Celery's ``autodiscover_tasks``.

        Args:
            packages: package names, a function returning them, or ``None`` for a configured
                Django project's ``INSTALLED_APPS``.
            related_name: the module looked for in each package.
            force: import now rather than at the first read of :attr:`tasks`.

        Raises:
            ConfigurationError: (now with ``force``, else at that read) a package is not found,
                or its tasks module was found but its import failed.
        """
        self._pending.append(functools.partial(discovery.autodiscover, packages, related_name))
        if force:
            _ = self.tasks

    def worker_lifespan(self, fn: L, /) -> L:
        """Register the worker lifespan: resources each worker process opens once at start,
        closes at its graceful stop, and hands its tasks (README "Worker lifespan").

        ``fn(worker)`` is an async generator function that yields once (or an
        ``@asynccontextmanager`` function); tasks read what it yields with
        :func:`aqueue.worker_state`. Returns ``fn`` unchanged (use it as a decorator).

        Raises:
            ConfigurationError: a lifespan is registered already (one per app, as FastAPI's;
                combine several resources in one, e.g. with ``contextlib.AsyncExitStack``).
            TypeError: ``fn`` is not an async generator or context manager function.
        """
        from aqueue.worker.lifespan import as_lifespan  # the worker package imports this one

        if self._worker_lifespan is not None:
            raise ConfigurationError(
                f"{self.main}: a worker lifespan is registered already; an app has one "
                f"(open several resources in it, e.g. with contextlib.AsyncExitStack)"
            )
        self._worker_lifespan = as_lifespan(fn)
        return fn

    @property
    def worker_lifespan_function(self) -> Lifespan | None:
        """The registered worker lifespan, normalised to an async context manager function."""
        return self._worker_lifespan

    @overload
    def task(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
    @overload
    def task(self, fn: Callable[P, AsyncIterator[R]], /) -> Task[P, list[R]]: ...
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...
    @overload
    def task(
        self,
        /,
        *,
        bind: Literal[True],
        name: str | None = ...,
        base: type[Task[Any, Any]] = ...,
        **options: Unpack[TaskOptions],
    ) -> _BoundTaskDecorator: ...
    @overload
    def task(
        self,
        /,
        *,
        bind: Literal[False] = ...,
        name: str | None = ...,
        base: type[Task[Any, Any]] = ...,
        **options: Unpack[TaskOptions],
    ) -> _TaskDecorator: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        bind: bool = False,
        name: str | None = None,
        base: type[Task[Any, Any]] = Task,
        **options: Unpack[TaskOptions],
    ) -> Any:
        """Register a function as a task; use bare (``@app.task``) or with options.

        Args:
            bind: pass the task itself as the first argument (``self.request``, ``self.retry``).
            name: the registered name; default ``module.function``.
            base: a :class:`Task` subclass whose hooks and attributes the task takes.
            **options: task options (``max_retries``, ``retry_backoff``, ``autoretry_for``,
                ``time_limit``, ``rate_limit``, ``queue``, ``priority``, ``ignore_result``...).

        Raises:
            ConfigurationError: an unknown option, or ``base`` is not a Task subclass.
        """
        check_task_options(options)
        check_unique_options(options)
        if not (isinstance(base, type) and issubclass(base, Task)):
            raise ConfigurationError(f"base={base!r} must be a subclass of aqueue.Task")
        if "autoretry_for" in options:
            options["autoretry_for"] = tuple(options["autoretry_for"])

        def register(func: Callable[..., Any]) -> Task[Any, Any]:
            task_name = name or f"{func.__module__}.{func.__qualname__}"
            task = base(self, func, task_name, bind=bind, **options)
            self._tasks[task_name] = task
            return task

        if fn is not None:
            return register(fn)
        return register

    def signature(self, name: str, args: Any = (), kwargs: Any = None, **options: Any) -> Signature:
        """A signature of a task by name, bound to this app."""
        return Signature(name, tuple(args), dict(kwargs or {}), options, app=self)

    def task_options(self, name: str) -> dict[str, Any]:
        """``task_annotations`` for task ``name``: options that override the task's own."""
        return routing.lookup(self.conf.task_annotations, name)

    # -- periodic tasks (aqueue.beat) --------------------------------------------------------

    #: Add ``sig`` to ``beat_schedule``, sent every ``schedule`` (Celery's method); see
    #: :func:`aqueue.beat.entry.add_periodic_task`.
    add_periodic_task = beat_entry.add_periodic_task

    @property
    def beat(self) -> BeatControl:
        """Periodic entries stored at runtime: ``await app.beat.add(name, task=..., schedule=...)``,
        ``await app.beat.remove(name)``, ``await app.beat.list()`` (see :mod:`aqueue.beat`)."""
        return BeatControl(self)

    @property
    def control(self) -> Control:
        """Remote control of the workers, as Celery's ``app.control``: ``await
        app.control.ping()``, ``.inspect().active()``, ``.revoke(task_id, terminate=True)``,
        ``.rate_limit("proj.add", "10/m")``, ``.shutdown()`` (see :mod:`aqueue.control`)."""
        return Control(self)

    def apply_annotations(self) -> None:
        """Set each registered task's options from ``task_annotations`` (a worker does this at
        start, so ``time_limit``, ``max_retries``, ``acks_late``... apply to the runs it makes).

        Raises:
            ConfigurationError: an annotation names an unknown task option.
        """
        for name, task in self.tasks.items():
            for key, value in self.task_options(name).items():
                if key not in TASK_OPTIONS:
                    raise ConfigurationError(
                        f"task_annotations for {name!r}: unknown task option {key!r}"
                    )
                setattr(task, key, tuple(value) if key == "autoretry_for" else value)

    # -- connections -------------------------------------------------------------------------

    def transport(self, url: str) -> Transport:
        """The transport of ``url`` for the running event loop: one per app, loop and URL, so
        every role on one server shares one client (``memory://``: one per app, every loop).

        Raises:
            ConfigurationError: no transport serves the URL's scheme.
        """
        if transport_type(url).one_per_process:
            found = self._memory.get(url)
            if found is None:
                found = self._memory[url] = transport_for(url)
            return found
        transports = self._connections.get().transports
        found = transports.get(url)
        if found is None:
            connection = self.conf.connection_options(url)
            found = transports[url] = transport_for(url, connection=connection)
        return found

    def connected(self) -> bool:
        """True when the running loop's broker, and its result backend if there is one, are
        connected already (no I/O): a send then need not connect first."""
        conns = self._connections.get()
        return conns.broker is not None and (
            conns.backend is not None or not self.has_result_backend
        )

    async def broker(self) -> Broker:
        """The connected broker for the running event loop (connecting on first use).

        Raises:
            BrokerConnectionError: the broker cannot be reached.
            ConfigurationError: the broker URL is invalid.
        """
        conns = self._connections.get()
        if conns.broker is None:
            async with conns.lock:
                if conns.broker is None:
                    broker = self._broker_instance or self.transport(
                        self.conf.resolved_broker_url()
                    ).broker(self.conf.broker_transport_options)
                    await broker.connect()
                    conns.broker = broker
        return conns.broker

    async def result_backend(self) -> ResultBackend:
        """The connected result backend for the running event loop.

        Raises:
            ConfigurationError: no result backend is configured (e.g. an AMQP broker alone).
            BrokerConnectionError: it cannot be reached.
        """
        conns = self._connections.get()
        if conns.backend is None:
            async with conns.lock:
                if conns.backend is None:
                    backend = (
                        self._backend_instance
                        or self.transport(self._backend_url("await results")).result_backend()
                    )
                    await backend.connect()
                    conns.backend = backend
        return conns.backend

    async def control_transport(self) -> ControlTransport:
        """The connected control transport for the running event loop: the broker's server
        where it carries control, else the result backend's (an AMQP broker uses its Redis or
        SQLite result backend for remote control, revocations, rate limits and events).

        Raises:
            ConfigurationError: neither server can carry control traffic.
            BrokerConnectionError: the server cannot be reached.
        """
        conns = self._connections.get()
        if conns.control is None:
            control = self.transport(self.control_url()).control()
            await control.connect()  # idempotent, and safe to race
            conns.control = control
        return conns.control

    def control_url(self) -> str:
        """The URL of the server that carries control traffic and shared state (see
        :meth:`control_transport`).

        Raises:
            ConfigurationError: neither the broker nor the result backend can carry it.
        """
        broker = self.conf.resolved_broker_url()
        if "control" in transport_type(broker).roles:
            return broker
        backend = self.conf.resolved_backend_url()
        if is_rpc(backend):
            raise rpc_cannot("carry remote control, revocations, rate limits and events")
        if backend is not None and "control" in transport_type(backend).roles:
            return backend
        raise ConfigurationError(
            f"remote control, revocations, rate limits and events need a Redis, SQLite or "
            f"memory broker or result backend; the broker {broker!r} has no control transport "
            f"of its own and no result backend is configured: set result_backend (e.g. "
            f"'redis://...')"
        )

    async def beat_store(self) -> BeatStore:
        """Beat's store (entries, last ticks, tick claims) on the result backend's server, for
        the running event loop, connected; namespaced by the app's name.

        Raises:
            ConfigurationError: no result backend is configured (e.g. an AMQP broker alone).
            BrokerConnectionError: the server cannot be reached.
        """
        needs = "keep beat's claims and entries"
        store = self.transport(self._backend_url(needs, needs)).beat_store(self.main)
        await store.connect()
        return store

    def _backend_url(self, purpose: str, needs: str | None = None) -> str:
        """The URL of the result backend's server: ``rpc://`` is the AMQP broker's (which can
        only send results back to their caller: ``needs`` names anything more, refused)."""
        url = self.conf.resolved_backend_url()
        if url is None:
            raise ConfigurationError(
                f"no result backend is configured: set result_backend (e.g. "
                f"Aqueue(..., backend='redis://127.0.0.1:6379/1')) to {purpose}"
            )
        if is_rpc(url):
            if needs is not None:
                raise rpc_cannot(needs)
            return rpc_server(self.conf.resolved_broker_url())
        return url

    @property
    def has_result_backend(self) -> bool:
        """True when a result backend is configured."""
        return self._backend_instance is not None or self.conf.resolved_backend_url() is not None

    async def close(self) -> None:
        """Close this loop's connections (other loops' close with their own ``close`` call).

        Connections reopen on next use. Instances passed as ``broker=``/``backend=`` are closed
        too (they are the app's for its lifetime).
        """
        loop = asyncio.get_running_loop()
        conns = self._connections.pop(loop)
        if conns is None:
            return
        for instance in (self._broker_instance, self._backend_instance):
            if instance is not None:
                await instance.close()
        for transport in [*conns.transports.values(), *self._memory.values()]:
            await transport.close()

    async def __aenter__(self) -> Aqueue:
        """``async with app:`` closes this loop's connections on the way out (FastAPI's
        ``lifespan``, a script's ``main``)."""
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run ``coro`` as a task on the current loop, holding a reference until it is done."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # -- sending -----------------------------------------------------------------------------

    def AsyncResult(self, task_id: str) -> _AsyncResult[Any]:
        """A result handle for an existing task id."""
        return _AsyncResult(task_id, self)

    def GroupResult(
        self, group_id: str, results: list[_AsyncResult[Any]] | None = None
    ) -> _GroupResult:
        """A handle for a sent group; without ``results`` its members load on first use."""
        return _GroupResult(group_id, results, self)

    async def send_task(
        self,
        name: str,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        _task: Task[Any, Any] | None = None,
        **options: Unpack[SendOptions],
    ) -> _AsyncResult[Any]:
        """Publish a call of task ``name``, with no need to import the task.

        Args:
            name: the registered task name.
            args: the call's positional arguments.
            kwargs: the call's keyword arguments.
            **options: Celery's ``apply_async`` options (:class:`~aqueue.sending.SendOptions`):
                ``countdown`` (seconds), ``eta`` (datetime; naive means UTC), ``expires``
                (seconds from now or a datetime; an expired message is not run and its state
                becomes REVOKED), ``task_id``, ``queue``, ``priority`` (0..9, 9 first),
                ``headers`` (dict), ``link`` and ``link_error`` (signatures or lists of them),
                ``serializer``, ``compression`` (``"zlib"``), ``shadow`` (a name for logs),
                ``ignore_result``, ``time_limit`` (seconds), ``retry`` (retry publishing on a
                connection error, default True) and ``retry_policy`` (``max_retries``,
                ``interval_start``, ``interval_step``, ``interval_max``, seconds).

        Raises:
            ArgumentsError: ``name`` is registered here and the arguments do not fit its
                signature (a ``TypeError``, as Celery's ``typing=True`` raises; nothing is sent;
                ``@app.task(typing=False)`` skips the check).
            ConfigurationError: an option is unknown or invalid.
            EncodeError: the arguments cannot be serialised; ``MessageTooLarge`` (one) when the
                message is over ``task_max_message_size`` bytes (nothing is sent).
            BrokerConnectionError: the broker cannot be reached within the retry policy.
        """
        return await self.sender.send(name, args, kwargs, _task, options)

    # What Task.delay() compares type(app).send_task with: when it is this one, delay() calls
    # the sender itself, one coroutine layer shorter; a subclass's own send_task is called.
    _plain_send_task = send_task

    async def send_many(
        self,
        name: str,
        arguments: Iterable[Iterable[Any]],
        *,
        _task: Task[Any, Any] | None = None,
        **options: Unpack[SendOptions],
    ) -> list[_AsyncResult[Any]]:
        """Publish one call of task ``name`` per item of ``arguments`` (its positional
        arguments), all in one broker round trip: the bulk path.

        ``await app.send_many("proj.add", [(1, 2), (3, 4)])`` is what
        ``[await add.delay(1, 2), await add.delay(3, 4)]`` does, minus a round trip per call.
        The options (those of :meth:`send_task` but ``task_id``) apply to every call. Unlike a
        ``group``, nothing ties the calls together afterwards: each result is its own.

        Returns:
            One result handle per item, in order.

        Raises:
            ConfigurationError: an option is unknown or invalid, or ``task_id`` is given.
            ArgumentsError: an item does not fit the task's signature (a ``TypeError``;
                nothing is sent; ``typing=False`` skips the check).
            EncodeError: an item cannot be serialised, or (``MessageTooLarge``) its message is
                over ``task_max_message_size`` bytes: nothing is sent.
            BrokerConnectionError: the broker cannot be reached within the retry policy.
        """
        return await self.sender.send_many(name, arguments, _task, options)

    async def publish(
        self, messages: list[Message], retry: bool = True, retry_policy: AnyRetryPolicy = None
    ) -> None:
        """Publish built messages; see :meth:`aqueue.sending.Sender.publish`."""
        await self.sender.publish(messages, retry, retry_policy)

    async def store_state(
        self, task_id: str | None, state: str, meta: Any = None, name: str | None = None
    ) -> None:
        """Store a state for ``task_id`` (used by ``Task.update_state``).

        Raises:
            ConfigurationError: no task id, or no result backend configured.
        """
        if not task_id:
            raise ConfigurationError(
                "update_state() needs a task id: call it inside a running task or pass task_id="
            )
        request = current_request.get()
        record = ResultRecord(
            task_id, state, meta, None, time.time(), request.retries if request else 0, name
        )
        backend = await self.result_backend()
        reply = request.reply_to if request is not None and request.id == task_id else None
        await backend.store(
            [(task_id, record.encode(self.conf.result_serializer, self.conf.signing))],
            self.conf.result_expires,
            {task_id: reply} if reply else None,
        )


def _instance(value: Any, protocol: type[Any], name: str) -> Any:
    if not isinstance(value, protocol):
        raise ConfigurationError(
            f"{name}= takes a URL or a {protocol.__name__} instance, not {type(value).__name__}"
        )
    return value
