"""The worker: orchestration in :mod:`.worker`, one message's execution in :mod:`.execute`."""

from aqueue.worker.worker import Worker

__all__ = ["Worker"]
