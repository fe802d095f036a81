"""The reply channel's inbox: mailboxes by task id, each held only as long as its handle."""

from __future__ import annotations

import gc

import pytest

from aqueue.results.mailbox import Inbox

pytestmark = pytest.mark.timeout(10)


def test_a_mailbox_leaves_the_inbox_with_its_last_reference() -> None:
    """The reply channel's inbox holds mailboxes weakly: a dropped handle's records are dropped."""
    inbox = Inbox()
    kept = inbox.expect("kept", None)
    assert inbox.expect("kept", None) is kept  # one mailbox per id while it is held
    inbox.expect("dropped", None)  # no reference kept
    assert inbox.expected() == ["kept"] and len(inbox) == 1
    assert inbox.put("kept", b"record") and kept.latest() == b"record"
    assert not inbox.put("dropped", b"record")
    cycle = inbox.expect("cycle", None)
    cycle.owner = cycle  # only the garbage collector frees it
    del cycle
    gc.collect()
    assert inbox.expected() == ["kept"] and inbox.get("cycle") is None
    del kept
    assert inbox.expected() == [] and inbox._boxes == {}
