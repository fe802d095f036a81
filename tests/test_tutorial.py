"""The Getting started pages' code runs: each page's module (examples/tutorial/, included into
the pages by docs/getting-started/*.md) is run as a user would, and prints what the page says.

Every ``python`` block of the Getting started and How-to pages is either included from a file
that a test runs or marked as a fragment on purpose (``<!-- fragment -->`` on the line before).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.test_examples import run_module

ROOT = Path(__file__).resolve().parents[1]
SNIPPET = re.compile(r'^--8<-- "([^":]+)(?::[\w-]+)?"$', re.MULTILINE)
FENCE = re.compile(r"(?P<before>[^\n]*)\n```python\n(?P<body>.*?)\n```", re.DOTALL)

#: Module -> lines its output must contain (the pages quote them).
EXPECTED = {
    "first_task": ["in-process: 5", "result: 8", "digest: 3b4d4b47a7fa", "bound: tutorial.whoami"],
    "results": [
        "value: 0.25",
        "state: SUCCESS",
        "raised: ZeroDivisionError('division by zero')",
        "returned: ZeroDivisionError | failed: True",
        "progress: 3/3",
        "3 images resized",
        "then: 3.0",
        "after forget: PENDING",
    ],
    "calling": [
        "countdown: 2 True",
        "queue: 6",
        "send_task: 10",
        "2026-11 report built on queue reports",
        "https://example.org fetched on try 3",
        "link: 3 + 4 = 7",
        "link_error: True",
    ],
    "canvas": [
        "called later: 15",
        "chain: 35",
        "group: [0, 1, 4, 9, 16]",
        "chord: 30",
        "starmap: [3, 7]",
        "chunks: [[0, 2, 4], [6, 8, 10]]",
    ],
    "periodic": [
        "ran: ['fast', 'fast', 'fast']",
        "added at run time, then ran",
        "sent by this beat: True",
    ],
    "celery_migration": ["words: 5", "the failed fetch was retried: True"],
    "configuration": [
        "timezone: Asia/Shanghai | expires: 43200.0 s",
        "concurrency: 50 | acks late: True",
        "did you mean 'task_serializer'?",
        "'worker_pool' is a Celery setting that aqueue does not have",
    ],
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("module", sorted(EXPECTED))
def test_tutorial_page_code_runs(module: str) -> None:
    done = run_module(f"examples.tutorial.{module}", timeout=50)
    missing = [line for line in EXPECTED[module] if line not in done.stdout]
    assert missing == [], done.stdout + done.stderr


def _pages() -> list[Path]:
    return sorted((ROOT / "docs" / "getting-started").glob("*.md")) + sorted(
        (ROOT / "docs" / "howto").glob("*.md")
    )


def test_every_tutorial_module_is_run() -> None:
    modules = {p.stem for p in (ROOT / "examples" / "tutorial").glob("*.py")}
    assert modules - {"__init__", "tutorial_config"} == set(EXPECTED)


@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.name)
def test_python_blocks_are_run_or_marked_fragments(page: Path) -> None:
    text = page.read_text()
    for match in FENCE.finditer(text):
        body, before = match.group("body"), match.group("before").strip()
        included = SNIPPET.findall(body)
        if included:
            for path in included:
                assert (ROOT / path).is_file(), f"{page.name}: {path} does not exist"
                assert path.startswith("examples/"), f"{page.name}: {path} is not an example"
            continue
        assert before == "<!-- fragment -->", (
            f"{page.name}: a python block that no test runs; include it from examples/ "
            f'(--8<-- "examples/...") or mark it <!-- fragment -->:\n{body[:200]}'
        )


@pytest.mark.timeout(90)
def test_testing_howto_example_passes() -> None:
    """docs/howto/testing.md's tests, run as a user runs them: pytest on their folder."""
    done = run_module("pytest", "-q", "-p", "no:cacheprovider", "examples/testing", timeout=80)
    assert "3 passed" in done.stdout, done.stdout
