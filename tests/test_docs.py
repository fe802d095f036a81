"""The documentation site's reference covers the public API, and its generated tables the code.

``make docs`` (strict) fails on a reference that does not resolve; these tests fail on a public
name that has no reference entry or no docstring, and on a generated table that misses a
setting, a command or a signal.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import os
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import aqueue
from aqueue import signals
from aqueue.celery_settings import CELERY_ONLY
from aqueue.config import _CHECKS

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference"
DIRECTIVE = re.compile(r"^::: ([\w.]+)", re.MULTILINE)

#: Modules documented whole: each has a directive, and every name of its __all__ a docstring.
PUBLIC_MODULES = (
    "aqueue.signals",
    "aqueue.middleware",
    "aqueue.exceptions",
    "aqueue.states",
    "aqueue.sync",
    "aqueue.testing",
    "aqueue.contrib.prometheus",
    "aqueue.contrib.otel",
)


def _hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "aqueue_docs_hook", ROOT / "docs" / "hooks" / "aqueue_docs.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _resolve(path: str) -> Any:
    """The object a ``::: dotted.path`` directive documents."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise AssertionError(f"{path} resolves to nothing")


def _directives() -> dict[str, Any]:
    found: dict[str, Any] = {}
    for page in sorted(REFERENCE.glob("*.md")):
        for path in DIRECTIVE.findall(page.read_text()):
            found[path] = _resolve(path)
    return found


def _public_names(module: ModuleType) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [
            n
            for n, v in vars(module).items()
            if not n.startswith("_") and getattr(v, "__module__", None) == module.__name__
        ]
    return list(names)


def test_every_top_level_name_has_a_reference_entry() -> None:
    documented = _directives()
    ids = {id(obj) for obj in documented.values()}
    missing = [
        name
        for name in aqueue.__all__
        if name != "__version__" and id(getattr(aqueue, name)) not in ids
    ]
    assert missing == [], f"add a '::: aqueue.NAME' entry to a page of docs/reference/: {missing}"


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_module_is_documented_whole(module_name: str) -> None:
    assert module_name in _directives(), f"docs/reference/ has no '::: {module_name}'"
    module = importlib.import_module(module_name)
    assert inspect.getdoc(module), f"{module_name} has no docstring"
    undocumented = [
        name
        for name in _public_names(module)
        if (inspect.isclass(value := getattr(module, name)) or inspect.isroutine(value))
        and not inspect.getdoc(value)
    ]
    assert undocumented == []


def test_every_top_level_name_has_a_docstring() -> None:
    undocumented = [
        name
        for name in aqueue.__all__
        if name != "__version__" and not inspect.getdoc(getattr(aqueue, name))
    ]
    assert undocumented == []


def test_settings_table_has_every_setting() -> None:
    table = _hook().settings_reference()
    rows = re.findall(r"^\| `(\w+)` \|", table, re.MULTILINE)
    assert rows == [n for n in aqueue.Aqueue("t", broker="memory://").conf if n in rows]
    assert set(rows) == set(_CHECKS)


def test_celery_settings_map_answers_every_celery_name() -> None:
    hook = _hook()
    table = hook.celery_settings_map()
    rows = dict(re.findall(r"^\| `(\w+)` \| (`\w+`|none|being added) \|", table, re.MULTILINE))
    assert set(rows) == set(hook.celery_names())
    assert {n for n, v in rows.items() if v == "none"} == set(CELERY_ONLY) & set(rows)
    assert {n for n, v in rows.items() if v.startswith("`")} == set(_CHECKS) & set(rows)


def test_cli_reference_has_every_command_and_option() -> None:
    import typer.main

    from aqueue.cli import cli

    text = _hook().cli_reference()
    root = typer.main.get_command(cli)
    context = root.context_class(root)
    for name in root.list_commands(context):  # type: ignore[attr-defined]
        command = root.get_command(context, name)  # type: ignore[attr-defined]
        assert f"`aqueue {name}`" in text
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("-"):
                    assert opt in text, f"aqueue {name} {opt}"


def test_signals_table_has_every_signal() -> None:
    text = _hook().signals_reference()
    for name in signals.__all__:
        if isinstance(getattr(signals, name), signals.Signal):
            assert f"| `{name}` " in text


def test_reference_docstrings_parse_without_warnings(caplog: pytest.LogCaptureFixture) -> None:
    """What ``make docs`` renders parses cleanly as Google-style docstrings: each ``Raises:``
    entry is ``ExceptionType: description``, each ``Args:`` entry one parameter (strict mode
    fails the site's build on either)."""
    import griffe

    package = griffe.load("aqueue", docstring_parser="google", search_paths=[str(ROOT)])
    seen: set[str] = set()

    def walk(obj: Any) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if obj.docstring is not None:
            obj.docstring.parsed  # noqa: B018 - parsing logs what it cannot read
        for name, member in obj.members.items():
            if not name.startswith("_") and not member.is_alias:
                walk(member)

    with caplog.at_level(logging.WARNING):
        for path in _directives():
            target = package if path == "aqueue" else package[path.removeprefix("aqueue.")]
            walk(target.final_target if target.is_alias else target)
    problems = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert problems == [], "\n".join(problems)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_site_builds_strict_with_no_broken_link(tmp_path: Path) -> None:
    """``make docs`` as a test, so ``make test`` sees what breaks the site: a page left out of
    the nav, a link or anchor that leads nowhere, a reference that does not resolve."""
    import subprocess

    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        capture_output=True,
        text=True,
        timeout=110,
        cwd=ROOT,
        env=env,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from check_site_links import broken_links
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    checked, broken = broken_links(site)
    assert checked > 1000 and broken == [], broken
