"""Fixtures of the canvas suites."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from tests.apps import canvas_tasks
from tests.apps.canvas_tasks import CanvasTasks


@pytest.fixture
async def c(transport_url: str) -> AsyncIterator[CanvasTasks]:
    """The canvas tasks on a fresh queue of the transport under test."""
    tasks = canvas_tasks.build(transport_url, queue=f"q-{uuid.uuid4().hex[:12]}")
    yield tasks
    await tasks.app.close()
