"""What the control suites share: ``t``, the ops app of a test on each transport."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.apps.ops_tasks import OPS_TRANSPORTS, OpsTasks, build, url_for


@pytest.fixture(params=OPS_TRANSPORTS)
async def t(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpsTasks]:
    """The ops tasks on a fresh app of each transport, on a queue of their own; closed after."""
    tasks = build(url_for(request.param, request, tmp_path), f"q-{uuid.uuid4().hex[:12]}")
    yield tasks
    await tasks.app.close()
