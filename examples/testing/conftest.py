# --8<-- [start:conftest]
import pytest

from aqueue import Aqueue
from examples.testing.tasks import app


@pytest.fixture
def aqueue_app() -> Aqueue:  # the plugin's fixture, overridden: which app to test
    return app


# --8<-- [end:conftest]
