"""The Getting started pages' code runs: each page's module (examples/tutorial/, included into
the pages by docs/getting-started/*.md) is run as a user would, and prints what the page says.

Every code block of the Getting started and How-to pages is included from a file under
examples/ that a test runs, or is the output of the page's module (``<!-- output -->`` on the
line before: each line must be printed by it; ``...`` stands for any text, a uuid for any uuid),
or is marked as a fragment on purpose (``<!-- fragment -->``: commands, config files, output of
another program).
"""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path

import pytest

from tests.test_examples import run_module

ROOT = Path(__file__).resolve().parents[1]
SNIPPET = re.compile(r'^--8<-- "([^":]+)(?::[\w-]+)?"$', re.MULTILINE)
UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"

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
    done = _run(module)
    missing = [line for line in EXPECTED[module] if line not in done.stdout]
    assert missing == [], done.stdout + done.stderr


@functools.cache
def _run(module: str) -> subprocess.CompletedProcess[str]:
    """``python -m examples.tutorial.<module>`` (once per test session), which must exit 0."""
    return run_module(f"examples.tutorial.{module}", timeout=50)


def _blocks(text: str) -> list[tuple[str, str, str]]:
    """(line before the fence, language, body) of every fenced block of a page."""
    blocks: list[tuple[str, str, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("```"):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            before = lines[i - 1].strip() if i else ""
            blocks.append((before, lines[i][3:].strip(), "\n".join(lines[i + 1 : end])))
            i = end
        i += 1
    return blocks


def _printed(expected: str, output: list[str]) -> bool:
    """Whether ``expected`` (``...``: any text; a uuid: any uuid) is a line of ``output``."""
    parts = re.split(f"(\\.\\.\\.|{UUID})", expected)
    pattern = "".join(
        ".*" if part == "..." else UUID if re.fullmatch(UUID, part) else re.escape(part)
        for part in parts
    )
    return any(re.fullmatch(pattern, line) for line in output)


def _pages() -> list[Path]:
    return sorted((ROOT / "docs" / "getting-started").glob("*.md")) + sorted(
        (ROOT / "docs" / "howto").glob("*.md")
    )


def test_every_tutorial_module_is_run() -> None:
    modules = {p.stem for p in (ROOT / "examples" / "tutorial").glob("*.py")}
    assert modules - {"__init__", "tutorial_config"} == set(EXPECTED)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.name)
def test_code_blocks_are_run_or_marked(page: Path) -> None:
    text = page.read_text()
    modules = sorted(set(re.findall(r'"examples/tutorial/(\w+)\.py', text)) - {"tutorial_config"})
    for before, language, body in _blocks(text):
        included = SNIPPET.findall(body)
        if included:
            for path in included:
                assert (ROOT / path).is_file(), f"{page.name}: {path} does not exist"
                assert path.startswith("examples/"), f"{page.name}: {path} is not an example"
        elif before == "<!-- output -->":
            assert len(modules) == 1, f"{page.name}: output of which module? {modules}"
            output = _run(modules[0]).stdout.splitlines()
            unprinted = [line for line in body.splitlines() if not _printed(line, output)]
            assert unprinted == [], f"{page.name}: not printed by {modules[0]}: {unprinted}"
        else:
            assert before == "<!-- fragment -->", (
                f"{page.name}: a {language or 'text'} block that no test runs; include it "
                f'from examples/ (--8<-- "examples/..."), or mark it <!-- output --> or '
                f"<!-- fragment -->:\n{body[:200]}"
            )


@pytest.mark.timeout(90)
def test_testing_howto_example_passes() -> None:
    """docs/howto/testing.md's tests, run as a user runs them: pytest on their folder."""
    done = run_module("pytest", "-q", "-p", "no:cacheprovider", "examples/testing", timeout=80)
    assert "3 passed" in done.stdout, done.stdout
