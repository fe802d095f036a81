"""Kept for the documented import path ``aqueue.ops``; the code is :mod:`aqueue.control.queues`."""

from aqueue.control.queues import (
    ClusterStatus,
    WorkerStatus,
    cluster_status,
    purge,
    replay_dead_letters,
)

__all__ = ["ClusterStatus", "WorkerStatus", "cluster_status", "purge", "replay_dead_letters"]
