"""Canvas under ``task_always_eager``: run a chain, group or chord inline, step by step.

As in Celery's eager mode, nothing touches the broker or the result backend: each task runs in
the caller's loop (see :mod:`aqueue.eager`), a chain passes each result on, a group runs its
members one after another, and a chord runs its body with the list of header results. The
returned handles are already finished. With ``task_eager_propagates`` (the default) the first
failure is raised at once; without it, a chain stops at the failed task and returns that task's
result, and a chord whose header failed returns a ChordError result for its body.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aqueue import states
from aqueue.canvas.primitives import Canvas, Signature, chain, chord, group
from aqueue.eager import EagerResult
from aqueue.exceptions import ChordError, ConfigurationError
from aqueue.results.group import GroupResult
from aqueue.results.record import ResultRecord, describe_exception
from aqueue.results.result import AsyncResult

if TYPE_CHECKING:
    from aqueue.app import Aqueue

Handle = AsyncResult[Any] | GroupResult


async def run_eager(app: Aqueue, sig: Canvas) -> Handle:
    """Run ``sig`` (ids assigned) now and return its finished result handle.

    Raises:
        The first task's exception when ``task_eager_propagates`` is True.
        ConfigurationError: an empty chain or a chord without a body.
    """
    return await _run(app, sig, (), None)


async def _run(app: Aqueue, sig: Canvas, args: tuple[Any, ...], parent: Handle | None) -> Handle:
    if isinstance(sig, Signature):
        call = sig.clone(args)
        options = {k: v for k, v in call.options.items() if k != "chord"}
        result = await app.send_task(call.task, call.args, call.kwargs, **options)
        result.parent = parent
        return result
    if isinstance(sig, chain):
        if not sig.tasks:
            raise ConfigurationError("an empty chain has nothing to run")
        handle: Handle | None = parent
        step_args = args
        for step in sig.tasks:
            handle = await _run(app, step, step_args, handle)
            if not await handle.successful():
                return handle
            step_args = (await handle.get(),)
        assert handle is not None
        return handle
    if isinstance(sig, chord):
        if sig.body is None:
            raise ConfigurationError(f"chord {sig!r} has no body")
        header = await _run(app, sig.header, args, parent)
        assert isinstance(header, GroupResult)
        if not await header.successful():
            return _chord_error(app, sig.body, header)
        return await _run(app, sig.body, (await header.get(),), header)
    if isinstance(sig, group):
        members: list[AsyncResult[Any]] = []
        for member in sig.tasks:
            done = await _run(app, member, args, None)
            if not isinstance(done, AsyncResult):
                raise ConfigurationError(f"a group member must end in a task: {member!r}")
            members.append(done)
        assert sig.id is not None
        return GroupResult(sig.id, members, app, parent)
    raise ConfigurationError(f"not a signature: {sig!r}")


def _chord_error(app: Aqueue, body: Canvas, header: GroupResult) -> Handle:
    failed = next(r for r in header.results if r._record and r._record.status != states.SUCCESS)
    err = ChordError(f"Dependency {failed.id} raised {failed.result!r}")
    task_id = body.id or ""
    record = ResultRecord(task_id, states.FAILURE, describe_exception(err), None, time.time())
    result = EagerResult(task_id, app, record)
    result.parent = header
    return result
