"""Canvas end to end: chains, groups, chords, map/starmap/chunks and their nesting, on every
transport (``transport_url``), with real workers in the test's loop."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aqueue import Aqueue, AsyncResult, GroupResult, Worker, chain, chord, group, signature
from aqueue.canvas import Signature, from_dict
from aqueue.canvas.dispatch import Plan, result_for
from aqueue.exceptions import (
    ChordError,
    ConfigurationError,
    TaskNotRegistered,
    TaskRevokedError,
    TimeoutError,
)
from tests.apps import canvas_tasks
from tests.apps.canvas_tasks import CanvasTasks

pytestmark = pytest.mark.timeout(60)

WAIT = 20.0  # seconds any single result may take


@pytest.fixture
async def worker(c: CanvasTasks) -> AsyncIterator[Worker]:
    async with Worker(c.app, concurrency=20, shutdown_timeout=5) as w:
        yield w


def token() -> str:
    return uuid.uuid4().hex


async def assert_queue_drained(app: Aqueue) -> None:
    """Nothing is left to run: with the workers stopped, every message sent has run or is here."""
    broker = await app.broker()
    assert await broker.fetch([app.conf.task_default_queue], 100, 0.2) == []


# -- chains ----------------------------------------------------------------------------------


async def test_chain_of_adds_gives_11_with_parents(c: CanvasTasks, worker: Worker) -> None:
    r = await (c.add.s(1, 2) | c.add.s(3) | c.add.s(5)).delay()
    assert isinstance(r, AsyncResult)
    assert await r.get(timeout=WAIT) == 11
    assert r.parent is not None and r.parent.parent is not None
    assert await r.parent.get(timeout=WAIT) == 6
    assert await r.parent.parent.get(timeout=WAIT) == 3
    assert r.parent.parent.parent is None


async def test_chain_function_and_call_forms(c: CanvasTasks, worker: Worker) -> None:
    part = [c.add.s(1, 2), c.add.s(3), c.add.s(5)]
    assert await (await chain(*part).delay()) == 11
    assert await (await chain(part)()) == 11  # Celery's chain(part)()


async def test_page_info_chain(c: CanvasTasks, worker: Worker) -> None:
    url = "https://example.com/"
    workflow = c.fetch_page.s(url) | c.parse_page.s() | c.store_page_info.s(url)
    assert await (await workflow.delay()).get(timeout=WAIT) == url
    assert canvas_tasks.STORED[url] == {"title": "Example", "words": 4}


async def test_immutable_signature_ignores_the_parent(c: CanvasTasks, worker: Worker) -> None:
    r = await (c.add.s(1, 1) | c.add.si(10, 10) | c.add.s(1)).delay()
    assert await r.get(timeout=WAIT) == 21


async def test_partial_arguments_go_to_the_first_task(c: CanvasTasks, worker: Worker) -> None:
    r = await (c.add.s(2) | c.mul.s(10)).apply_async((1,))
    assert await r.get(timeout=WAIT) == 30


async def test_chain_steps_know_parent_and_root(c: CanvasTasks, worker: Worker) -> None:
    r = await (c.lineage.s() | c.lineage.s() | c.lineage.s()).delay()
    last = await r.get(timeout=WAIT)
    assert r.parent is not None and r.parent.parent is not None
    root = r.parent.parent.id
    assert last["id"] == r.id
    assert last["parent_id"] == r.parent.id
    assert last["root_id"] == root


async def test_failed_step_fails_the_chain_result(c: CanvasTasks, worker: Worker) -> None:
    r = await (c.add.s(1, 1) | c.fail.si("broken step") | c.add.s(1)).delay()
    with pytest.raises(ValueError, match="broken step"):
        await r.get(timeout=WAIT)
    assert r.parent is not None
    assert await r.parent.failed()
    assert "ValueError: broken step" in (r.traceback or "")


async def test_dead_lettered_step_fails_the_chain_result(c: CanvasTasks, worker: Worker) -> None:
    missing = c.app.signature("canvas.not_registered")
    before = worker.processed
    r = await (c.add.s(1, 1) | missing | c.add.s(1)).delay()
    with pytest.raises(TaskNotRegistered):
        await r.get(timeout=WAIT)
    # The chain's failure is stored before the step's message reaches the dead-letter queue.
    await asyncio.wait_for(worker.wait_processed(before + 2), WAIT)
    dead = await (await c.app.broker()).dead_letters(c.app.conf.task_default_queue)
    assert len(dead) == 1 and "unknown task" in dead[0].reason


async def test_chain_link_and_link_error(c: CanvasTasks, worker: Worker) -> None:
    tok = token()
    after_id = str(uuid.uuid4())
    ok = chain(c.add.s(1, 1), c.add.s(1))
    ok.link(c.add.s(100).set(task_id=after_id))
    assert await (await ok.delay()).get(timeout=WAIT) == 3
    assert await c.app.AsyncResult(after_id).get(timeout=WAIT) == 103

    bad = chain(c.add.s(1, 1), c.fail.si("late"), c.add.s(1))
    bad.link_error(c.errback.s(token=tok))
    r = await bad.delay()
    with pytest.raises(ValueError, match="late"):
        await r.get(timeout=WAIT)
    assert r.parent is not None
    await _until(lambda: tok in canvas_tasks.ERRBACKS)
    assert canvas_tasks.ERRBACKS[tok] == [(r.parent.id, "ValueError('late')")]


# -- groups ----------------------------------------------------------------------------------


async def test_group_of_nine_adds(c: CanvasTasks, worker: Worker) -> None:
    g = await group([c.add.s(i, i) for i in range(1, 10)]).delay()
    assert isinstance(g, GroupResult)
    expected = [2 * i for i in range(1, 10)]
    assert await g.get(timeout=WAIT) == expected
    assert await g == expected
    assert await g.ready() and await g.successful() and not await g.failed()
    assert await g.completed_count() == 9
    assert len(g) == 9 and [r.id for r in g] == [r.id for r in g.results]
    assert await g[3].get(timeout=WAIT) == 8


async def test_group_result_is_restorable_by_id(c: CanvasTasks, worker: Worker) -> None:
    g = await group(c.add.s(i, 1) for i in range(5)).delay()
    assert await g.get(timeout=WAIT) == [1, 2, 3, 4, 5]

    restored = await GroupResult.restore(c.app, g.id)
    assert restored is not None
    assert [r.id for r in restored] == [r.id for r in g]
    assert await restored == [1, 2, 3, 4, 5]
    lazy = c.app.GroupResult(g.id)  # loads its members on first use
    assert await lazy.completed_count() == 5
    assert await lazy.get(timeout=WAIT) == [1, 2, 3, 4, 5]
    assert await GroupResult.restore(c.app, str(uuid.uuid4())) is None


async def test_group_of_chains(c: CanvasTasks, worker: Worker) -> None:
    g = await group(c.add.s(1, 1) | c.add.s(1), c.add.s(2, 2) | c.mul.s(10)).delay()
    assert await g.get(timeout=WAIT) == [3, 40]


async def test_group_partial_arguments_go_to_each_member(c: CanvasTasks, worker: Worker) -> None:
    g = await group(c.add.s(1), c.add.s(2), c.add.si(0, 0)).delay(10)
    assert await g.get(timeout=WAIT) == [11, 12, 0]


async def test_group_failure_propagates_or_is_returned(c: CanvasTasks, worker: Worker) -> None:
    g = await group(c.add.s(1, 1), c.fail.s("member down"), c.add.s(2, 2)).delay()
    with pytest.raises(ValueError, match="member down"):
        await g.get(timeout=WAIT)
    values = await g.get(timeout=WAIT, propagate=False)
    assert values[0] == 2 and values[2] == 4
    assert isinstance(values[1], ValueError)
    assert await g.failed() and not await g.successful()
    assert await g.completed_count() == 2


async def test_group_get_times_out_without_a_worker(c: CanvasTasks) -> None:
    g = await group(c.add.s(1, 1), c.add.s(2, 2)).delay()
    with pytest.raises(TimeoutError, match="0 of 2"):
        await g.get(timeout=0.3)
    assert not await g.ready()


async def test_group_revoke_revokes_every_member(c: CanvasTasks) -> None:
    g = await group(c.add.s(1, 1), c.add.s(2, 2)).delay()
    await g.revoke()
    values = await g.get(timeout=WAIT, propagate=False)
    assert [type(v) for v in values] == [TaskRevokedError, TaskRevokedError]
    async with Worker(c.app, concurrency=2, shutdown_timeout=5):
        marker = await c.add.delay(0, 0)  # same queue, after them: they have been met by then
        assert await marker.get(timeout=WAIT) == 0
    assert [await r.state() for r in g] == ["REVOKED", "REVOKED"]


async def test_empty_group_and_empty_chord(c: CanvasTasks, worker: Worker) -> None:
    assert await (await group([], app=c.app).apply_async()) == []
    body = c.tsum.s()
    assert await (await chord([], body).delay()).get(timeout=WAIT) == 0


# -- chords ----------------------------------------------------------------------------------


async def test_chord_into_tsum(c: CanvasTasks, worker: Worker) -> None:
    r = await chord((c.add.s(i, i) for i in range(10)), c.tsum.s()).delay()
    assert await r.get(timeout=WAIT) == 90
    assert isinstance(r.parent, GroupResult)
    assert await r.parent.get(timeout=WAIT) == [2 * i for i in range(10)]


async def test_chord_call_and_pipe_forms(c: CanvasTasks, worker: Worker) -> None:
    header = [c.add.s(i, i) for i in range(4)]
    assert await (await chord(header)(c.tsum.s())).get(timeout=WAIT) == 12
    assert await (await (group(header) | c.tsum.s()).delay()).get(timeout=WAIT) == 12


async def test_chord_body_is_a_chain(c: CanvasTasks, worker: Worker) -> None:
    r = await chord([c.add.s(1, 1), c.add.s(2, 2)], c.tsum.s() | c.add.s(100)).delay()
    assert await r.get(timeout=WAIT) == 106


async def test_chain_of_groups_is_an_implicit_chord(c: CanvasTasks, worker: Worker) -> None:
    r = await (c.add.s(1, 1) | group(c.add.s(1), c.add.s(2)) | c.tsum.s()).delay()
    assert await r.get(timeout=WAIT) == 7  # 2 -> [3, 4] -> 7
    two = await (group(c.add.s(1, 1), c.add.s(2, 2)) | group(c.tsum.s(), c.mul.s(2))).delay()
    assert isinstance(two, GroupResult)  # a group body: each member gets the header's list
    assert await two.get(timeout=WAIT) == [6, [2, 4, 2, 4]]


async def test_chain_ending_in_a_group(c: CanvasTasks, worker: Worker) -> None:
    g = await (c.add.s(1, 1) | group(c.add.s(1), c.mul.s(10))).delay()
    assert isinstance(g, GroupResult)
    assert await g.get(timeout=WAIT) == [3, 20]
    assert isinstance(g.parent, AsyncResult) and await g.parent == 2


async def test_chord_inside_a_chain(c: CanvasTasks, worker: Worker) -> None:
    workflow = c.add.s(1, 1) | chord([c.add.s(1), c.add.s(2)], c.tsum.s()) | c.add.s(1000)
    assert await (await workflow.delay()).get(timeout=WAIT) == 1007


async def test_chords_nested_in_a_chord_header(c: CanvasTasks, worker: Worker) -> None:
    inner = chord([c.add.s(1, 1), c.add.s(2, 2)], c.tsum.s())
    outer = chord([inner, c.add.s(5, 5), c.add.s(1, 1) | c.add.s(1)], c.tsum.s())
    assert await (await outer.delay()).get(timeout=WAIT) == 6 + 10 + 3


async def test_failed_header_member_fails_the_chord(c: CanvasTasks, worker: Worker) -> None:
    tok = token()
    body = c.record_body.s(tok)
    body.link_error(c.errback.s(token=tok))
    header = [c.count_member.s(tok, 0), c.fail.s("header down"), c.count_member.s(tok, 2)]
    r = await chord(header, body).delay()
    assert isinstance(r.parent, GroupResult)
    failed_id = r.parent[1].id
    with pytest.raises(ChordError, match=failed_id) as info:
        await r.get(timeout=WAIT)
    assert "header down" in str(info.value)
    await r.parent.get(timeout=WAIT, propagate=False)  # every header task has finished
    await _until(lambda: tok in canvas_tasks.ERRBACKS)
    assert canvas_tasks.ERRBACKS[tok] == [(r.id, repr(info.value))]
    assert canvas_tasks.BODY_RUNS[tok] == 0


async def test_two_failed_members_report_the_chord_once(c: CanvasTasks, worker: Worker) -> None:
    tok = token()
    body = c.record_body.s(tok)
    body.link_error(c.errback.s(token=tok))
    r = await chord([c.fail.s("one"), c.fail.s("two")], body).delay()
    with pytest.raises(ChordError):
        await r.get(timeout=WAIT)
    assert r.parent is not None
    await r.parent.get(timeout=WAIT, propagate=False)
    # The second failure's report is after its result is stored; wait for its ack too.
    await _until(lambda: worker.processed >= 2)
    assert len(canvas_tasks.ERRBACKS[tok]) == 1


async def test_failed_chain_in_a_chord_header_fails_the_chord(
    c: CanvasTasks, worker: Worker
) -> None:
    header = [c.add.s(1, 1), c.fail.s("early") | c.add.s(1)]
    r = await chord(header, c.tsum.s()).delay()
    with pytest.raises(ChordError, match="early"):
        await r.get(timeout=WAIT)


# -- map, starmap, chunks ------------------------------------------------------------------


async def test_map_starmap_chunks(c: CanvasTasks, worker: Worker) -> None:
    assert await (await c.tsum.map([[1, 2], [3, 4]]).delay()) == [3, 7]
    assert await (await c.add.starmap([(1, 2), (3, 4)]).delay()) == [3, 7]
    assert await (await c.mul.starmap([(2, 3), (4, 5)]).delay()) == [6, 20]  # a plain function
    pairs = [(i, i) for i in range(7)]
    chunked = await c.add.chunks(pairs, 3).delay()
    assert await chunked.get(timeout=WAIT) == [[0, 2, 4], [6, 8, 10], [12]]
    total = await (c.add.chunks(pairs, 3) | c.flatten_sum.s()).delay()
    assert await total.get(timeout=WAIT) == 42


# -- data, ids, options ----------------------------------------------------------------------


def test_canvas_round_trips_through_its_dict(c: CanvasTasks) -> None:
    workflow = c.add.s(1, 1) | chord(
        [c.add.s(1), c.mul.s(2) | c.add.si(3, 3)], c.tsum.s().set(queue="x"), priority=5
    )
    workflow.link_error(c.errback.s(token="t"))
    data = workflow.to_dict()
    rebuilt = from_dict(data, c.app)
    assert rebuilt == workflow
    assert rebuilt.to_dict() == data
    assert signature(data, app=c.app) == workflow
    named = signature("canvas.add", args=(2, 2), countdown=1, app=c.app)
    assert isinstance(named, Signature) and named.options == {"countdown": 1}
    assert repr(c.add.s(1) | c.add.si(2)) == "canvas.add(1) | canvas.addi(2)"


def test_clone_and_set_do_not_share_state(c: CanvasTasks) -> None:
    base = c.add.s(1).set(link=c.add.s(5))
    copy = base.clone((9,), countdown=3)
    assert copy.args == (9, 1) and base.args == (1,)
    assert copy.options["countdown"] == 3 and "countdown" not in base.options
    assert copy.options["link"] is not base.options["link"]
    assert copy.options["link"].app is c.app  # signatures are cloned, the app is shared
    base.link(c.add.s(6))  # a single callback given by set() becomes a list
    assert [repr(s) for s in base.options["link"]] == ["canvas.add(5)", "canvas.add(6)"]


async def test_freeze_gives_the_ids_used_when_sent(c: CanvasTasks, worker: Worker) -> None:
    workflow = chord([c.add.s(1, 1), c.add.s(2, 2)], c.tsum.s())
    frozen = workflow.freeze()
    assert frozen.id == workflow.id
    sent = await workflow.delay()
    assert sent.id == frozen.id
    assert await frozen.get(timeout=WAIT) == 6


async def test_chain_task_id_names_its_result(c: CanvasTasks, worker: Worker) -> None:
    wanted = str(uuid.uuid4())
    r = await (c.add.s(1, 1) | c.add.s(1)).apply_async(task_id=wanted)
    assert r.id == wanted
    assert await c.app.AsyncResult(wanted).get(timeout=WAIT) == 3


async def test_bad_canvas_is_refused_before_anything_is_sent(c: CanvasTasks) -> None:
    with pytest.raises(ConfigurationError, match="no body"):
        await chord([c.add.s(1, 1)]).delay()
    with pytest.raises(ConfigurationError, match="empty chain"):
        await chain(app=c.app).delay()
    with pytest.raises(ConfigurationError, match="end in a task"):
        await group(c.add.s(1, 1) | group(c.add.s(1), c.add.s(2))).delay()
    with pytest.raises(ConfigurationError, match="unknown option"):
        await group(c.add.s(1, 1).set(countdwn=1)).delay()
    with pytest.raises(ConfigurationError, match="unknown option 'quue'"):
        await (c.add.s(1, 1) | c.add.s(1) | c.add.s(2).set(quue="x")).delay()
    with pytest.raises(ConfigurationError, match="no app"):
        await chain(Signature("canvas.add", (1, 1))).delay()
    assert await (await c.app.broker()).fetch([c.app.conf.task_default_queue], 10, 0.1) == []


async def test_eager_mode_runs_a_canvas_inline() -> None:
    t = canvas_tasks.build("memory://", task_always_eager=True)
    assert await (await (t.add.s(1, 2) | t.add.s(3) | t.add.s(5)).delay()) == 11
    g = await group(t.add.s(i, i) for i in range(3)).delay()
    assert await g == [0, 2, 4]
    r = await chord([t.add.s(1, 1), t.add.s(2, 2)], t.tsum.s() | t.add.s(1)).delay()
    assert await r == 7
    assert await (await t.tsum.map([[1], [2, 3]]).delay()) == [1, 5]
    with pytest.raises(ValueError, match="eager"):
        await (t.add.s(1, 1) | t.fail.si("eager")).delay()


# -- exactly once ----------------------------------------------------------------------------


async def test_header_task_run_twice_counts_once(c: CanvasTasks) -> None:
    """A redelivered header task (same id, run again) must not complete the chord early or
    send the body again."""
    tok = token()
    workflow = chord([c.count_member.s(tok, i) for i in range(3)], c.record_body.s(tok))
    workflow.assign_ids()
    result = result_for(c.app, workflow)
    plan = Plan(c.app)
    plan.add(workflow)
    plan.messages.append(plan.messages[0])  # header task 0 is delivered twice
    async with Worker(c.app, concurrency=4, shutdown_timeout=5) as w:
        await plan.run()
        assert await result.get(timeout=WAIT) == 3
        await _until(lambda: w.processed >= 5)  # 4 header deliveries + the body
    await assert_queue_drained(c.app)
    assert canvas_tasks.MEMBER_RUNS[f"{tok}:0"] == 2
    assert canvas_tasks.BODY_RUNS[tok] == 1


@pytest.mark.parametrize("rounds", [5])
async def test_two_workers_finish_the_header_together_body_once(
    shared_url: str, rounds: int
) -> None:
    """Two workers (two apps on one URL) each run one header task; both tasks wait on one
    barrier, so they store their results and count themselves at the same moment."""
    queue = f"q-{uuid.uuid4().hex[:12]}"
    a = canvas_tasks.build(shared_url, queue=queue)
    b = canvas_tasks.build(shared_url, queue=queue)
    tokens = [token() for _ in range(rounds)]
    for tok in tokens:
        canvas_tasks.BARRIERS[tok] = asyncio.Barrier(2)
    # One task at a time each, holding no more: the two header tasks land on different workers.
    async with (
        Worker(a.app, concurrency=1, prefetch_multiplier=1, shutdown_timeout=5),
        Worker(b.app, concurrency=1, prefetch_multiplier=1, shutdown_timeout=5),
    ):
        for tok in tokens:
            r = await chord([a.meet.s(tok, 0), a.meet.s(tok, 1)], a.record_body.s(tok)).delay()
            assert await r.get(timeout=WAIT) == 2
    await assert_queue_drained(a.app)
    assert [canvas_tasks.BODY_RUNS[tok] for tok in tokens] == [1] * rounds
    await a.app.close()
    await b.app.close()


@pytest.mark.timeout(120)
async def test_chord_of_10000_tasks_on_redis(redis_server: str) -> None:
    tok = token()
    t = canvas_tasks.build(f"{redis_server}/0", queue=f"q-{uuid.uuid4().hex[:12]}")
    n = 10_000
    started = time.perf_counter()
    async with Worker(t.app, concurrency=200, shutdown_timeout=10) as w:
        r = await chord((t.noop.s(i) for i in range(n)), t.record_body.s(tok)).delay()
        sent = time.perf_counter()
        assert await r.get(timeout=100) == n
        done = time.perf_counter()
        await _until(lambda: w.processed >= n + 1)
    await assert_queue_drained(t.app)
    assert canvas_tasks.BODY_RUNS[tok] == 1
    print(
        f"\nchord of {n:,} on Redis: sent in {sent - started:.2f}s, "
        f"body done {done - started:.2f}s after the start"
    )
    await t.app.close()


async def _until(check: Any, timeout: float = WAIT) -> None:
    """Wait for a side effect that has no result to await (an errback, an ack)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
