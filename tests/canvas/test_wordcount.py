"""The wordcount example (a map-reduce chord through a spawned worker) gives the right answer."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from collections import Counter
from pathlib import Path

import pytest

from examples.filehash.producer import find_files
from examples.wordcount.tasks import WORD

LIMIT = 150  # files: enough for a real chord, quick enough for the suite


@pytest.mark.timeout(120)
def test_wordcount_on_the_embedded_default_prints_the_top_words() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "examples.wordcount.producer", "--limit", str(LIMIT), "--top", "5"],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    total: Counter[str] = Counter()
    for path in find_files(Path(sysconfig.get_paths()["stdlib"]), LIMIT):
        total.update(WORD.findall(path.read_text(encoding="utf-8", errors="replace")))
    expected = sorted(total.items(), key=lambda item: (-item[1], item[0]))[:5]
    lines = done.stdout.splitlines()
    printed = [(line.split()[1], int(line.split()[2].replace(",", ""))) for line in lines[:5]]
    assert printed == expected
    assert lines[5].startswith(f"{LIMIT} files, {LIMIT + 1} tasks, ")
