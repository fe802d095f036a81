"""Sending a canvas: assign ids, plan the messages, store group records, publish in batches.

Used by ``apply_async`` on a chain, group or chord in a client, and by a worker continuing a
workflow (:mod:`aqueue.worker.workflow`). Planning does no I/O: :class:`Plan` collects the
messages that start a signature and the group records to store; :meth:`Plan.run` then stores
the records (before any member can finish) and publishes the messages, 1,000 per broker call.

Every task id is assigned before anything is sent (:meth:`~aqueue.canvas.Canvas.assign_ids`),
so the result handle exists at once and a chain's result is its last task's id.

How each shape starts (``rest`` is what follows it in a chain, as signature dicts):

- a task: one message; ``Message.options["chain"]`` carries ``rest``. The worker sends the next
  step when the task succeeds.
- a chain: its first step, with the other steps put in front of ``rest``.
- a group: each member; the member ids are stored under ``group:<group id>``. With ``rest`` it
  is a chord whose body is ``chain(*rest)`` (an implicit chord).
- a chord: like a group, and each member's *final* task (a chain member's last task) carries
  ``Message.options["chord"] = {"id": group id, "size": members, "body": body dict}``. With
  ``rest``, the body is ``chain(body, *rest)``. An empty header runs the body with ``[]``.

With the ``rpc://`` result backend a result reaches only the reply queue its message names, so
every message of a canvas names the sending client's (the worker passes it on to the next steps
of a chain), and every result handle gets its mailbox before anything is sent. Chords are
refused: counting a header needs a result store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aqueue.canvas.primitives import (
    Canvas,
    Signature,
    _as_list,
    callbacks,
    chain,
    chord,
    from_dict,
    group,
)
from aqueue.exceptions import AqueueError, ConfigurationError
from aqueue.results.group import GroupResult, encode_meta, meta_key
from aqueue.results.result import AsyncResult
from aqueue.sending.options import SEND_OPTIONS, check_option_values
from aqueue.transports import ReplyChannels
from aqueue.transports.rpc import COUNT_A_CHORD, is_rpc, rpc_cannot

if TYPE_CHECKING:
    from aqueue.app import Aqueue
    from aqueue.message import Message

__all__ = ["BATCH_SIZE", "Plan", "apply", "final_task", "result_for"]

#: Messages per broker call when a canvas starts many tasks at once.
BATCH_SIZE = 1000

# Option keys that are not passed down from a chain, group or chord to its parts as they are.
_OWN = ("task_id", "link", "link_error")


async def apply(
    sig: Canvas, args: tuple[Any, ...], kwargs: dict[str, Any] | None, options: dict[str, Any]
) -> AsyncResult[Any] | GroupResult:
    """Send ``sig`` with partial ``args``/``kwargs`` and ``options``; return its result handle.

    Raises:
        ConfigurationError: no app, an unknown option or one with a bad value (on any part,
            callbacks included), a task id used for two tasks, an unsupported shape, or a chord
            with no result backend.
        BrokerConnectionError: the broker or result backend cannot be reached.
    """
    app = sig.require_app()
    retry = bool(options.pop("retry", True))
    policy = options.pop("retry_policy", None)
    work = sig.clone(tuple(args), kwargs, **options)
    work.assign_ids()
    _check_options(work)  # later chain steps are sent by a worker: refuse a bad one now
    if app.conf.task_always_eager:
        from aqueue.canvas.eager import run_eager

        return await run_eager(app, work)
    context: dict[str, Any] = {}
    replies: ReplyChannels | None = None
    if is_rpc(app.conf.resolved_backend_url()):
        if _makes_chord(work):
            raise rpc_cannot(COUNT_A_CHORD)
        backend = await app.result_backend()
        if isinstance(backend, ReplyChannels):
            replies = backend
            context["reply_to"] = await backend.reply_channel()
    result = result_for(app, work, replies=replies)
    plan = Plan(app)
    plan.add(work, (), context)
    await plan.run(retry, policy)
    return result


def result_for(
    app: Aqueue,
    sig: Canvas,
    parent: AsyncResult[Any] | GroupResult | None = None,
    *,
    replies: ReplyChannels | None = None,
) -> AsyncResult[Any] | GroupResult:
    """The result handle of a signature whose ids are assigned, with ``.parent`` links.

    Args:
        replies: the result backend whose reply channel the messages name: every task's
            handle gets its mailbox there (``rpc://``); ``None``: handles watch their task.

    Raises:
        ConfigurationError: an empty chain, or a group member that ends in a group.
    """
    if isinstance(sig, Signature):
        task_id = _id(sig)
        mailbox = replies.expect(task_id) if replies is not None else None
        result: AsyncResult[Any] = AsyncResult(task_id, app, sig.task, mailbox)
        result.parent = parent
        return result
    if isinstance(sig, chain):
        if not sig.tasks:
            raise ConfigurationError("an empty chain has nothing to run")
        handle = parent
        for step in sig.tasks:
            handle = result_for(app, step, handle, replies=replies)
        assert handle is not None
        return handle
    if isinstance(sig, chord):
        header = result_for(app, sig.header, parent, replies=replies)
        return header if sig.body is None else result_for(app, sig.body, header, replies=replies)
    if isinstance(sig, group):
        members = [_member_result(app, m, replies) for m in sig.tasks]
        return GroupResult(_id(sig), members, app, parent)
    raise ConfigurationError(f"not a signature: {sig!r}")


def _member_result(app: Aqueue, member: Canvas, replies: ReplyChannels | None) -> AsyncResult[Any]:
    final_task(member, "a group member")  # raises for a member ending in a group
    result = result_for(app, member, replies=replies)
    assert isinstance(result, AsyncResult)
    return result


def final_task(sig: Canvas, role: str) -> Signature:
    """The task whose result stands for ``sig``'s: a chain's last, a chord's body's.

    Raises:
        ConfigurationError: ``sig`` ends in a group (``role`` says where it was found).
    """
    if isinstance(sig, Signature):
        return sig
    if isinstance(sig, chain) and sig.tasks:
        return final_task(sig.tasks[-1], role)
    if isinstance(sig, chord) and sig.body is not None:
        return final_task(sig.body, role)
    raise ConfigurationError(
        f"{role} must end in a task, not in a group: {sig!r} (make the group a chord with a body "
        f"that collects its results)"
    )


def final_tasks(sig: Canvas) -> list[Signature]:
    """Every task whose result is part of ``sig``'s (one, or each member of a final group)."""
    if isinstance(sig, group):
        return [t for member in sig.tasks for t in final_tasks(member)]
    if isinstance(sig, chain) and sig.tasks:
        return final_tasks(sig.tasks[-1])
    if isinstance(sig, chord):
        return final_tasks(sig.body if sig.body is not None else sig.header)
    return [sig] if isinstance(sig, Signature) else []


class Plan:
    """The messages that start one or more signatures, and the group records to store first."""

    def __init__(self, app: Aqueue) -> None:
        self.app = app
        self.messages: list[Message] = []
        self.groups: list[tuple[str, list[str]]] = []

    def add(
        self,
        sig: Canvas,
        rest: Sequence[dict[str, Any]] = (),
        context: dict[str, Any] | None = None,
    ) -> None:
        """Plan the start of ``sig`` (ids assigned), followed by the chain steps ``rest``.

        Args:
            sig: what to start; its parts may be changed (options added): pass a copy.
            rest: the signature dicts that follow ``sig`` in a chain.
            context: options for every message that does not set them (``parent_id``...).

        Raises:
            ConfigurationError: an unknown option, or an unsupported shape (see
                :func:`final_task`), or a chord with no body or no result backend.
        """
        context = context or {}
        if isinstance(sig, chain):
            steps = _spread_chain(sig)
            if not steps:
                raise ConfigurationError("an empty chain has nothing to run")
            self.add(steps[0], [s.to_dict() for s in steps[1:]] + list(rest), context)
        elif isinstance(sig, chord):
            self._chord(sig, rest, context)
        elif isinstance(sig, group):
            if rest:
                self._chord(chord(sig, _chain_of(rest, self.app)), (), context)
            else:
                members = _spread(sig.tasks, sig.options)
                for member in members:
                    final_task(member, "a group member").options.setdefault("group_id", _id(sig))
                self._members(_id(sig), members, context)
        elif isinstance(sig, Signature):
            self.messages.append(self._message(sig, rest, context))
        else:
            raise ConfigurationError(f"not a signature: {sig!r}")

    def _chord(self, c: chord, rest: Sequence[dict[str, Any]], context: dict[str, Any]) -> None:
        if c.body is None:
            raise ConfigurationError(
                f"chord {c!r} has no body: use chord(header, body) or chord(header)(body)"
            )
        body: Canvas = c.body
        _merge(body, {k: v for k, v in c.options.items() if k in ("link", "link_error")})
        if rest:
            body = chain(body, _chain_of(rest, self.app))
        header_options = {k: v for k, v in c.options.items() if k not in _OWN}
        members = [_merge(m, header_options) for m in _spread(c.header.tasks, c.header.options)]
        if not members:  # as in Celery: the body runs at once with no results
            self.add(body.clone(([],)), (), context)
            return
        if not self.app.has_result_backend:
            raise ConfigurationError(
                "a chord needs a result backend to collect its header's results: set "
                "result_backend (e.g. 'redis://127.0.0.1:6379/1')"
            )
        if is_rpc(self.app.conf.resolved_backend_url()):  # a chain's group, met by a worker
            raise rpc_cannot(COUNT_A_CHORD)
        group_id = _id(c.header)
        info = {"id": group_id, "size": len(members), "body": body.to_dict()}
        for member in members:
            task = final_task(member, "a chord header member")
            task.options["chord"] = info
            task.options.setdefault("group_id", group_id)
        self._members(group_id, members, context)

    def _members(self, group_id: str, members: list[Canvas], context: dict[str, Any]) -> None:
        ids: list[str] = []
        for member in members:
            self.add(member, (), context)
            ids.append(_id(final_task(member, "a group member")))
        self.groups.append((group_id, ids))

    def _message(
        self, sig: Signature, rest: Sequence[dict[str, Any]], context: dict[str, Any]
    ) -> Message:

        options = dict(sig.options)
        chord_info = options.pop("chord", None)
        unknown = set(options) - SEND_OPTIONS
        if unknown:
            raise ConfigurationError(f"unknown option {sorted(unknown)[0]!r} on {sig!r}")
        extra = dict(options.pop("options", None) or {})
        if rest:
            extra["chain"] = list(rest)
        if chord_info is not None:
            extra["chord"] = chord_info
            options["ignore_result"] = False  # the body is given the header's stored results
        options["options"] = extra
        for key, value in context.items():
            options.setdefault(key, value)
        reply_to = options.pop("reply_to", None)  # from the context: the caller's reply queue
        task = self.app.tasks.get(sig.task)
        try:
            return self.app.sender.build_message(
                sig.task, sig.args, sig.kwargs, task, options, reply_to
            )
        except AqueueError:
            raise
        except (TypeError, ValueError) as exc:
            # A bad option value (countdown="soon"): a clear error, and one a worker continuing
            # a chain reports as the chain's failure instead of losing the step before it.
            raise ConfigurationError(f"cannot send {sig!r}: {exc}") from exc

    async def run(self, retry: bool = True, retry_policy: dict[str, Any] | None = None) -> None:
        """Encode every message, store the group records, then publish the messages in batches
        of :data:`BATCH_SIZE`. A message that cannot be sent (an argument that cannot be
        serialised, one over ``task_max_message_size``) stops the canvas before anything of it
        is stored or published.

        Raises:
            EncodeError: a message cannot be encoded (``MessageTooLarge``: it is too large).
            BrokerConnectionError: the broker (after ``retry_policy``) or the result backend
                cannot be reached; batches already published stay published.
        """
        sender = self.app.sender
        outgoing = [sender.outgoing(m) for m in self.messages]
        if self.groups and self.app.has_result_backend:
            backend = await self.app.result_backend()
            signing = self.app.conf.signing
            records = [(meta_key(gid), encode_meta(gid, ids, signing)) for gid, ids in self.groups]
            await backend.store(records, self.app.conf.result_expires)
        wrapped = sender.wraps_publishing()  # middleware may change headers: encoded again
        for start in range(0, len(outgoing), BATCH_SIZE):
            if wrapped:
                await sender.publish(self.messages[start : start + BATCH_SIZE], retry, retry_policy)
            else:
                batch = outgoing[start : start + BATCH_SIZE]
                await sender.publish_outgoing(batch, retry, retry_policy)


def _makes_chord(sig: Canvas) -> bool:
    """True if sending ``sig`` makes a chord somewhere: one with a header, or a group followed
    by more steps in a chain (an implicit chord)."""
    if isinstance(sig, chord):
        return bool(sig.header.tasks) or (sig.body is not None and _makes_chord(sig.body))
    if isinstance(sig, group):
        return any(_makes_chord(member) for member in sig.tasks)
    if isinstance(sig, chain):
        steps = _flat_steps(sig)
        return any(
            _makes_chord(step) or (isinstance(step, group) and i < len(steps) - 1)
            for i, step in enumerate(steps)
        )
    return False


def _flat_steps(c: chain) -> list[Canvas]:
    """A chain's steps with the steps of the chains nested in it spliced in."""
    return [s for t in c.tasks for s in (_flat_steps(t) if isinstance(t, chain) else [t])]


def _check_options(sig: Canvas) -> None:
    """Refuse ``sig`` before anything of it is sent if a worker could not send a part later.

    Later chain steps, chord bodies and ``link``/``link_error`` callbacks are sent by the
    worker that finishes the task before them; a part it cannot build would leave the result
    of the chain or chord waiting. So this checks every part and callback: its option names,
    the values of the options that are converted when it is sent (:data:`_VALUE_CHECKS`), that
    callbacks are task signatures, the options that only a single send takes (``unique_key``,
    ``after``), and that no task id stands for two tasks of ``sig`` (a frozen signature used
    twice: a chord counts distinct ids and would wait for ever, and two tasks would share one
    result).

    Raises:
        ConfigurationError: naming the part and the option or the task id.
    """
    _check_tree(sig, set())


def _check_tree(sig: Canvas, ids: set[str] | None) -> None:
    """:func:`_check_options` for ``sig``; ``ids``: the task ids met so far (``None``: do not
    check ids, for callbacks, which may be given to several tasks)."""
    parts: list[Canvas] = [sig]
    while parts:
        part = parts.pop()
        for own in ("unique_key", "after"):  # sending one task only (aqueue.sending.guard)
            if part.options.get(own) is not None:
                raise ConfigurationError(f"{own}= sends one task, not a canvas: {part!r}")
        for callback in _callbacks(part):
            _check_tree(callback, None)
        if isinstance(part, Signature):
            unknown = set(part.options) - SEND_OPTIONS - {"chord"}
            if unknown:
                raise ConfigurationError(f"unknown option {sorted(unknown)[0]!r} on {part!r}")
            _check_values(part)
            if ids is not None and part.id is not None:
                if part.id in ids:
                    raise ConfigurationError(
                        f"task id {part.id} is used twice in one canvas ({part!r}): give each "
                        f"task its own signature (a frozen signature keeps its id when cloned)"
                    )
                ids.add(part.id)
        elif isinstance(part, chain | group):
            parts.extend(part.tasks)
        elif isinstance(part, chord):
            parts.append(part.header)
            if part.body is not None:
                parts.append(part.body)


def _callbacks(part: Canvas) -> list[Signature]:
    """``part``'s ``link`` and ``link_error`` signatures.

    Raises:
        ConfigurationError: one is not a task signature (a chain, a group, anything else).
    """
    return [
        sig
        for key in ("link", "link_error")
        for sig in callbacks(part.options.get(key), part.app, f"{key} on {part!r}")
    ]


def _check_values(sig: Signature) -> None:
    """Raise ConfigurationError for an option value that ``sig``'s message cannot be built
    with (the sender's own converters: :func:`aqueue.sending.options.check_option_values`)."""
    try:
        check_option_values(sig.options)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{exc} (on {sig!r})") from None


def _id(sig: Canvas) -> str:
    if sig.id is None:
        raise ConfigurationError(f"{sig!r} has no id: assign_ids() first")
    return sig.id


def _chain_of(steps: Sequence[dict[str, Any]], app: Aqueue) -> Canvas:
    sigs = [from_dict(step, app) for step in steps]
    return sigs[0] if len(sigs) == 1 else chain(sigs, app=app)


def _merge(sig: Canvas, options: dict[str, Any]) -> Canvas:
    """Give ``sig`` the ``options`` it does not set itself; callbacks are added to its own."""
    for key, value in options.items():
        if key in ("link", "link_error"):
            if value:
                sig.options[key] = [*_as_list(sig.options.get(key)), *_as_list(value)]
        elif key != "task_id":
            sig.options.setdefault(key, value)
    return sig


def _spread(members: Sequence[Canvas], options: dict[str, Any]) -> list[Canvas]:
    """A group's members, each given the group's options (Celery: each member gets them)."""
    return [_merge(m, options) for m in members]


def _spread_chain(c: chain) -> list[Canvas]:
    """A chain's steps: its options to the first, ``link`` to the last, ``link_error`` to all."""
    steps = list(c.tasks)
    if steps:
        _merge(steps[0], {k: v for k, v in c.options.items() if k not in _OWN})
        _merge(steps[-1], {"link": c.options.get("link")})
        for step in steps:
            _merge(step, {"link_error": c.options.get("link_error")})
    return steps
