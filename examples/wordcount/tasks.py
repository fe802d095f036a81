"""The wordcount app: count the words of one file (map), merge the counts (reduce).

Start a worker for it from the repository root::

    aqueue worker -A examples.wordcount.tasks -c 8 -l info

The broker and result backend come from ``$AQUEUE_BROKER_URL`` / ``$AQUEUE_RESULT_BACKEND``,
else the embedded default, ``aqueue.db`` beside this file. ``producer.py``
sends the chord ``chord(count_words.s(path) for each file, top_words.s(20))``.
"""

from __future__ import annotations

import re
from collections import Counter

from aqueue import Aqueue

app = Aqueue("wordcount")

#: A word: a letter or underscore, then at least one more letter, digit or underscore (so
#: identifiers and English words alike; single letters such as loop variables are left out).
WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]+")


# Plain functions, not `async def`: reading and matching are blocking and CPU-bound, and the
# worker runs plain functions in its thread pool, so its event loop stays responsive.
@app.task(name="wordcount.count_words")
def count_words(path: str) -> dict[str, int]:
    """How many times each word occurs in the file at ``path`` (decoded as UTF-8, leniently).

    Raises:
        OSError: the file cannot be read; the task, and so the chord, fails with it.
    """
    with open(path, encoding="utf-8", errors="replace") as f:
        return dict(Counter(WORD.findall(f.read())))


@app.task(name="wordcount.top_words")
def top_words(counts: list[dict[str, int]], n: int = 20) -> list[tuple[str, int]]:
    """Merge the per-file counts and return the ``n`` most frequent words with their totals.

    Ties are broken alphabetically, so the answer does not depend on the order files finished.
    """
    total: Counter[str] = Counter()
    for one in counts:
        total.update(one)
    return sorted(total.items(), key=lambda item: (-item[1], item[0]))[:n]
