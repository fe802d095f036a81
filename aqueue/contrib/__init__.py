"""Optional integrations, each behind an extra: ``aqueue[prometheus]`` (:mod:`.prometheus`),
``aqueue[otel]`` (:mod:`.otel`). Importing one without its extra raises ``ImportError`` naming
the extra to install."""

from __future__ import annotations

__all__ = ["missing_extra"]


def missing_extra(module: str, package: str, extra: str) -> ImportError:
    """The error of an integration imported without its extra: names what to install."""
    return ImportError(f"{module} needs {package}: pip install 'aqueue[{extra}]'")
