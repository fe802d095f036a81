"""Workflows (chains, groups, chords) found in the task history, and their graphs.

A task message carries its place in a workflow: ``parent_id`` (the task whose success sent it: the
previous step of a chain, or the last header member of a chord for the chord's body),
``root_id`` (the first task of the workflow) and ``group_id`` (the group or chord header it
belongs to). :class:`WorkflowIndex` groups tasks by those links as their ``task-received`` events
come; :func:`layout` places a workflow's tasks in columns, one per step, with edges from each
parent - and from every member of a group to the task that follows the group (a chord's body).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aqueue.dashboard.history import TaskRecord

__all__ = ["Graph", "Node", "WorkflowIndex", "kind", "layout"]

#: A graph draws at most this many tasks of a workflow.
MAX_NODES = 300

NODE_WIDTH = 190
NODE_HEIGHT = 40
COLUMN_GAP = 70
ROW_GAP = 12
MARGIN = 10


class WorkflowIndex:
    """Which workflow each task belongs to; a workflow is named by its first task's id (or its
    group's id when it starts with a group)."""

    def __init__(self) -> None:
        self.of: dict[str, str] = {}
        self.members: dict[str, list[str]] = {}
        self._groups: dict[str, str] = {}

    def add(self, r: TaskRecord) -> None:
        """Place ``r`` (a task with workflow links) in its workflow; a task without links is
        left out until a child names it as parent."""
        if r.id in self.of:
            return
        parent, group, root = r.parent_id, r.group_id, r.root_id
        wf = self.of.get(parent) if parent else None
        if wf is None and group:
            wf = self._groups.get(group)
        if wf is None and root and root != r.id:
            wf = self.of.get(root, root)
        wf = wf or parent or group
        if wf is None:
            return
        if group:
            self._groups.setdefault(group, wf)
        for task_id in (root, parent):
            if task_id and task_id != r.id and task_id not in self.of and task_id == wf:
                self._join(task_id, wf)
        self._join(r.id, wf)

    def _join(self, task_id: str, wf: str) -> None:
        self.of[task_id] = wf
        self.members.setdefault(wf, []).append(task_id)

    def forget(self, r: TaskRecord) -> None:
        """Drop ``r`` (it left the history)."""
        wf = self.of.pop(r.id, None)
        if wf is None:
            return
        members = self.members.get(wf)
        if members is not None:
            if r.id in members:
                members.remove(r.id)
            if not members:
                del self.members[wf]

    def newest(self, limit: int) -> list[tuple[str, list[str]]]:
        """The ``limit`` workflows seen last, newest first: ``(workflow id, task ids)``."""
        out = []
        for wf in reversed(self.members):
            out.append((wf, self.members[wf]))
            if len(out) >= limit:
                break
        return out


@dataclass(frozen=True, slots=True)
class Node:
    """A task drawn at ``(x, y)`` (pixels, top left)."""

    id: str
    name: str
    state: str
    x: int
    y: int


@dataclass(frozen=True, slots=True)
class Graph:
    """A workflow's drawing: nodes, edges as ``(x1, y1, x2, y2)``, the size, and how many tasks
    were left out (past :data:`MAX_NODES`)."""

    nodes: list[Node]
    edges: list[tuple[int, int, int, int]]
    width: int
    height: int
    hidden: int


def kind(records: Sequence[TaskRecord]) -> str:
    """What a workflow looks like: ``chain`` (steps only), ``group`` (members only), ``chord``
    (a group's members, then one task after them), or ``workflow`` (anything else: a chain
    into a chord...)."""
    groups = {r.group_id for r in records if r.group_id}
    if not groups:
        return "chain"
    members = sum(1 for r in records if r.group_id)
    by_id = {r.id: r for r in records}
    after = [
        r
        for r in records
        if r.parent_id in by_id and by_id[r.parent_id].group_id not in (None, r.group_id)
    ]
    if len(groups) == 1 and members == len(records) and not any(r.parent_id for r in records):
        return "group"
    if len(groups) == 1 and len(after) == 1 and members + 1 == len(records):
        return "chord"
    return "workflow"


def layout(task_ids: Sequence[str], get: Callable[[str], TaskRecord | None]) -> Graph:
    """Lay out the workflow of ``task_ids`` (in the order they were received).

    A task's column is one more than its parents' (the tasks it follows); a task that follows a
    group member whose group it is not part of follows every member of that group.
    """
    records = [r for r in (get(t) for t in task_ids[:MAX_NODES]) if r is not None]
    known = {r.id: r for r in records}
    groups: dict[str, list[str]] = {}
    for r in records:
        if r.group_id:
            groups.setdefault(r.group_id, []).append(r.id)
    sources: dict[str, list[str]] = {}
    for r in records:
        parent = known.get(r.parent_id or "")
        if parent is None:
            sources[r.id] = []
        elif parent.group_id and parent.group_id != r.group_id:
            sources[r.id] = groups[parent.group_id]
        else:
            sources[r.id] = [parent.id]
    column: dict[str, int] = {}
    for r in records:  # parents are received before their children
        column[r.id] = 1 + max((column.get(s, 0) for s in sources[r.id]), default=-1)
    sizes: dict[int, int] = {}
    for r in records:
        sizes[column[r.id]] = sizes.get(column[r.id], 0) + 1
    tallest = max(sizes.values(), default=1)
    rows: dict[int, int] = {}
    nodes: dict[str, Node] = {}
    for r in records:  # each column centred on the tallest one
        col = column[r.id]
        row = rows.get(col, 0)
        rows[col] = row + 1
        x = MARGIN + col * (NODE_WIDTH + COLUMN_GAP)
        y = MARGIN + (row + (tallest - sizes[col]) / 2) * (NODE_HEIGHT + ROW_GAP)
        nodes[r.id] = Node(r.id, r.name or "?", r.state, x, round(y))
    edges = []
    for r in records:
        to = nodes[r.id]
        for s in sources[r.id]:
            frm = nodes[s]
            edges.append(
                (
                    frm.x + NODE_WIDTH,
                    frm.y + NODE_HEIGHT // 2,
                    to.x,
                    to.y + NODE_HEIGHT // 2,
                )
            )
    width = MARGIN * 2 + (max(column.values(), default=0) + 1) * (NODE_WIDTH + COLUMN_GAP)
    height = MARGIN * 2 + tallest * (NODE_HEIGHT + ROW_GAP)
    return Graph(list(nodes.values()), edges, width, height, max(0, len(task_ids) - MAX_NODES))
