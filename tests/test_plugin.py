"""The pytest plugin as a user sees it: a fresh pytest run with an app of their own."""

from __future__ import annotations

import pytest

USER_APP = """
from aqueue import Aqueue

app = Aqueue("userproj", broker="redis://127.0.0.1:1/0", backend="redis://127.0.0.1:1/1")

@app.task
async def add(x: int, y: int) -> int:
    return x + y

@app.task(queue="io")
def fetch(url: str) -> str:
    return url.upper()
"""

USER_TESTS = """
from userproj import add, fetch

async def test_add(aqueue_worker):
    assert await (await add.delay(1, 2)) == 3

async def test_routed_queue(aqueue_worker):
    assert await (await fetch.delay("x")) == "X"

async def test_state_is_fresh_per_test(aqueue_worker):
    assert aqueue_worker.processed == 0
"""


def test_fixture_override(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(userproj=USER_APP, test_user=USER_TESTS)
    pytester.makeconftest(
        "import pytest\nfrom userproj import app\n\n"
        "@pytest.fixture\ndef aqueue_app():\n    return app\n"
    )
    pytester.makeini("[pytest]\nasyncio_mode = auto\n")
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_ini_option(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(userproj=USER_APP, test_user=USER_TESTS)
    pytester.makeini("[pytest]\nasyncio_mode = auto\naqueue_app = userproj:app\n")
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_missing_app_is_a_clear_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user="async def test_x(aqueue_worker):\n    pass\n")
    pytester.makeini("[pytest]\nasyncio_mode = auto\n")
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*name your app by overriding the aqueue_app fixture*"])
