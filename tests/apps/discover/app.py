"""The app: its tasks live in modules that import it (circular if imported from here)."""

from __future__ import annotations

import os

from aqueue import Aqueue

app = Aqueue(
    "discover",
    broker=os.environ.get("AQUEUE_BROKER_URL", "memory://"),
    include=["tests.apps.discover.extra"],
)
app.autodiscover_tasks(
    ["tests.apps.discover.shop", "tests.apps.discover.notasks"], related_name="tasks"
)
