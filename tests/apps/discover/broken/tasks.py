"""Its import fails: the error must be reported as such, not as "not found"."""

from __future__ import annotations

import tests.apps.discover.no_such_module  # noqa: F401
