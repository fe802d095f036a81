"""AQUEUE_LOOP: which event loop the CLI runs on (aqueue.loops)."""

from __future__ import annotations

import asyncio

import pytest

from aqueue import loops as loop
from aqueue.exceptions import ConfigurationError


async def _loop_type() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_asyncio_is_chosen_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(loop.LOOP_ENV, "asyncio")
    assert loop.loop_factory() is None
    assert loop.run(_loop_type()).startswith("asyncio")


def test_auto_takes_uvloop_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    uvloop = pytest.importorskip("uvloop")
    monkeypatch.delenv(loop.LOOP_ENV, raising=False)
    assert loop.loop_factory() is uvloop.new_event_loop
    assert loop.run(_loop_type()).startswith("uvloop")


def test_an_unknown_choice_is_a_clear_error_and_nothing_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(loop.LOOP_ENV, "trio")
    ran = []

    async def main() -> None:
        ran.append(True)

    with pytest.raises(ConfigurationError, match="AQUEUE_LOOP='trio'"):
        loop.run(main())
    assert ran == []


def test_uvloop_asked_for_but_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setenv(loop.LOOP_ENV, "uvloop")
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import fails as if not installed
    with pytest.raises(ConfigurationError, match=r"aqueue\[uvloop\]"):
        loop.loop_factory()


@pytest.mark.parametrize("choice", ["asyncio", "uvloop"])
def test_the_sync_clients_loop_follows_the_choice(
    monkeypatch: pytest.MonkeyPatch, choice: str
) -> None:
    from aqueue import sync

    if choice == "uvloop":
        pytest.importorskip("uvloop")
    monkeypatch.setenv(loop.LOOP_ENV, choice)
    sync.shutdown()  # a portal made before this test keeps its loop: start a new one
    try:
        assert sync.call(_loop_type).startswith(choice)
    finally:
        sync.shutdown()
