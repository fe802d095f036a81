"""MkDocs hook of the documentation site: the parts of the pages made from the code.

A page holds a marker where generated Markdown goes, so the tables cannot drift from what they
describe:

``<!-- aqueue:cli -->``
    every command and option of the ``aqueue`` command line, walked from its typer app;
``<!-- aqueue:settings -->``
    every setting of :class:`aqueue.config.Settings`: name, type and default from the dataclass,
    meaning from the README's Configuration table (else the declaration's own comment);
``<!-- aqueue:signals -->``
    every signal of :mod:`aqueue.signals` with its arguments and when it is sent;
``<!-- aqueue:celery-task-options -->`` (``-send-options``, ``-commands``, ``-signals``)
    Celery's task options, ``apply_async`` options, commands and signals against aqueue's
    (docs/hooks/celery_map.py);
``<!-- aqueue:readme-performance -->``
    the README's Performance section (the peer table and the commands that reproduce it);
``<!-- aqueue:celery-settings -->``
    every Celery setting name (the list ``tests/test_config.py`` checks) with aqueue's setting
    of the same name or the answer of :data:`aqueue.celery_settings.CELERY_ONLY`.

A link from a page to a repository file outside ``docs/`` (``../examples/fastapi_app/main.py``)
is pointed at a generated page showing that file (``source/examples/fastapi_app/main.py.md``), so
the site stands alone and strict mode still checks every link. A marker or generated table that
cannot be made fails the build.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import re
import sys
import tokenize
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files, InclusionLevel
from mkdocs.structure.pages import Page

sys.path.insert(0, str(Path(__file__).resolve().parent))  # celery_map.py, beside this hook
import celery_map
from celery_map import cell as _cell

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"<!-- aqueue:([a-z-]+) -->")
# ](../path) or ](../../path): a link leaving docs/ for the repository.
OUTSIDE = re.compile(r"\]\(((?:\.\./)+)([^)#\s]+)(#[^)\s]*)?\)")
SOURCE_DIR = "source"
LANGUAGES = {
    ".md": "markdown",
    ".py": "python",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".json": "json",
    ".toml": "toml",
}

# Settings aqueue shares with Celery but whose default or meaning differs (the rest behave as
# Celery documents them, checked when set).
DIFFERS = {
    "task_acks_late": "default `True` (Celery: `False`): acked after the outcome is stored",
    "worker_concurrency": "default 100 coroutines on one event loop (Celery: CPUs, as processes)",
    "task_default_queue": "default `default` (Celery: `celery`)",
    "result_backend": "default: the broker's URL (Celery: none)",
    "broker_url": "default: `$AQUEUE_BROKER_URL`, else a SQLite file (Celery: AMQP on localhost)",
    "worker_max_tasks_per_child": "applies to `--processes N` children",
    "worker_max_memory_per_child": "applies to `--processes N` children (KiB resident)",
    "task_queues": "Celery's dict form only (no kombu `Queue` objects); AMQP exchanges",
    "redis_socket_timeout": "default `None` (Celery: 120 s)",
    "task_reject_on_worker_lost": "default `True` (Celery: `False`): the task is delivered again",
    "task_eager_propagates": "default `True` (Celery: `False`)",
    "task_default_priority": "0..9, 9 runs first on every broker (Celery on Redis: 0 first)",
    "broker_connection_max_retries": "default `None`: forever (Celery: 100)",
    "broker_pool_limit": "Redis: default 128 per process and loop (Celery: 10)",
    "redis_max_connections": "default 128 (Celery: no limit)",
    "broker_use_ssl": "`True` on Redis and `{}` turn TLS on too (kombu ignores them)",
    "broker_transport_options": (
        "Redis `visibility_timeout` default 30 s, renewed while a task runs (Celery: 3600 s)"
    ),
}


# -- the command line --------------------------------------------------------------------------


# typer builds its commands with a click of its own (typer._click in typer 0.29): the walk uses
# what `--help` prints (get_help_record) and click's documented attributes, never isinstance.


def _param_row(param: Any, context: Any) -> str:
    record = param.get_help_record(context)
    if record is None:  # an argument: its name and whether it is required
        name = param.human_readable_name
        return f"| `{name}` | argument{', required' if param.required else ''} |"
    names, meaning = record
    return f"| `{_cell(names)}` | {_cell(meaning)} |"


def _command_md(command: Any, path: list[str], out: list[str]) -> None:
    level = "#" * min(2 + len(path) - 1, 4)
    name = " ".join(path)
    out.append(f"{level} `{name}`\n")
    help_text = (command.help or "").strip()
    if help_text:
        out.append(help_text.split("\f")[0].strip() + "\n")
    context = command.context_class(command, info_name=path[-1])
    params = [p for p in command.params if not getattr(p, "hidden", False)]
    if params:
        out.append("| Option | Meaning |\n|---|---|")
        out.extend(_param_row(p, context) for p in params)
        out.append("")
    if hasattr(command, "list_commands"):
        for sub in command.list_commands(context):
            child = command.get_command(context, sub)
            if child is not None and not child.hidden:
                _command_md(child, [*path, sub], out)


def cli_reference() -> str:
    """Markdown of every ``aqueue`` command, from the typer app :data:`aqueue.cli.cli`."""
    import typer.main

    from aqueue.cli import cli

    root = typer.main.get_command(cli)
    out: list[str] = []
    _command_md(root, ["aqueue"], out)
    return "\n".join(out)


# -- settings ----------------------------------------------------------------------------------


def _declaration_comments() -> dict[str, str]:
    """Each Settings field's comment in aqueue/config.py: on its line, else the lines above."""
    source = (ROOT / "aqueue" / "config.py").read_text()
    tree = ast.parse(source)
    settings = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings")
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#:").strip()
    found: dict[str, str] = {}
    for node in settings.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        line = node.lineno
        if line in comments:
            found[node.target.id] = comments[line]
            continue
        above: list[str] = []
        while line - 1 in comments:
            line -= 1
            above.insert(0, comments[line])
        if above and not above[-1].endswith(":"):
            found[node.target.id] = " ".join(above)
    return found


def _readme_meanings() -> dict[str, tuple[str, str]]:
    """README's Configuration table: setting -> (default as written, meaning), links made to
    work from docs/reference/ (README anchors become plain text)."""
    text = (ROOT / "README.md").read_text()
    rows: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        match = re.match(r"^\| `([a-z_]+)` \| (.*?) \| (.*) \|$", line)
        if match:
            meaning = re.sub(r"\[([^\]]+)\]\(#[^)]*\)", r"\1", match.group(3))
            meaning = re.sub(r"\]\(docs/", "](../", meaning)
            rows.setdefault(match.group(1), (match.group(2), meaning))
    return rows


def _type_name(annotation: Any) -> str:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    return text.replace("|", "or")


def _default(f: dataclasses.Field[Any]) -> str:
    if f.default is not dataclasses.MISSING:
        return f"`{f.default!r}`"
    if f.default_factory is not dataclasses.MISSING:
        return f"`{f.default_factory()!r}`"
    return ""


def settings_reference() -> str:
    """Markdown table of every setting, from the Settings dataclass."""
    from aqueue.config import _CHECKS, Settings

    meanings = _readme_meanings()
    comments = _declaration_comments()
    lines = ["| Setting | Type | Default | Meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(Settings):
        if f.name not in _CHECKS:
            continue
        meaning = meanings.get(f.name, ("", comments.get(f.name, "")))[1]
        if not meaning:
            raise PluginError(
                f"setting {f.name!r} has no meaning: add it to the README's Configuration table "
                "or a comment on its declaration in aqueue/config.py"
            )
        lines.append(
            f"| `{f.name}` | `{_cell(_type_name(f.type))}` | {_cell(_default(f))} | {meaning} |"
        )
    missing = set(_CHECKS) - {f.name for f in dataclasses.fields(Settings)}
    if missing:
        raise PluginError(f"settings checked but not declared: {sorted(missing)}")
    return "\n".join(lines)


def celery_names() -> list[str]:
    """Every Celery 5 setting name, as tests/test_config.py lists them (CELERY_NAMES)."""
    tree = ast.parse((ROOT / "tests" / "test_config.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "CELERY_NAMES" for t in node.targets
        ):  # CELERY_NAMES = """name name ...""".split()
            text = " ".join(
                str(n.value) for n in ast.walk(node.value) if isinstance(n, ast.Constant)
            )
            return sorted(set(text.split()))
    raise PluginError("tests/test_config.py has no CELERY_NAMES list")


def celery_settings_map() -> str:
    """Markdown table: every Celery setting and aqueue's equivalent or the reason for none."""
    from aqueue.celery_settings import CELERY_ONLY
    from aqueue.config import _CHECKS

    lines = ["| Celery setting | aqueue | Notes |", "|---|---|---|"]
    for name in celery_names():
        if name in _CHECKS:
            note = DIFFERS.get(name, "as Celery, checked when set")
            mark = "**differs**: " if name in DIFFERS else ""
            lines.append(f"| `{name}` | `{name}` | {mark}{_cell(note)} |")
        elif name in CELERY_ONLY:
            lines.append(f"| `{name}` | none | {_cell(CELERY_ONLY[name])} |")
        else:
            lines.append(f"| `{name}` | being added | accepted when its issue lands |")
    aqueue_only = [n for n in _CHECKS if n not in set(celery_names())]
    lines.append("")
    lines.append(
        "Settings aqueue has that Celery does not: "
        + ", ".join(f"`{n}`" for n in aqueue_only)
        + "."
    )
    return "\n".join(lines)


# -- signals -----------------------------------------------------------------------------------


def signals_reference() -> str:
    """Markdown table of every signal of :mod:`aqueue.signals`: its keyword arguments and when
    it is sent (the signal's own doc, given where it is declared)."""
    import inspect

    from aqueue import signals

    lines = ["| Signal | Arguments (besides `sender`, `signal`) | Sent |", "|---|---|---|"]
    for name in signals.__all__:
        signal = getattr(signals, name)
        if not isinstance(signal, signals.Signal):
            continue
        arguments = ", ".join(f"`{a}`" for a in signal.providing_args)
        doc = inspect.cleandoc(signal.__doc__ or "")
        doc = re.sub(r":(?:class|func|meth|mod|data):`~?([^`]+)`", r"`\1`", doc)
        lines.append(f"| `{name}` {{ #{name} }} | {arguments} | {_cell(doc)} |")
    return "\n".join(lines)


# -- README sections -----------------------------------------------------------------------------


def readme_section(title: str) -> str:
    """The README's ``## title`` section, for a page at the top of docs/: its heading dropped,
    links into docs/ made relative to docs/, other repository links pointed outside docs/, and
    links to the README's own headings left as text."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index(f"## {title}") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    text = "\n".join(lines[start:end]).strip()
    text = re.sub(r"\[([^\]]+)\]\(#[^)]*\)", r"\1", text)
    text = re.sub(r"\]\((?!https?:|\.\./|#|docs/)([^)]+)\)", r"](../\1)", text)
    return re.sub(r"\]\(docs/", "](", text)


def _celery_map(name: str) -> Callable[[], str]:
    """A table maker of celery_map.py (beside this hook), its errors as build errors."""

    def make() -> str:
        try:
            return str(getattr(celery_map, name)())
        except ValueError as exc:
            raise PluginError(str(exc)) from exc

    return make


GENERATORS = {
    "readme-performance": lambda: readme_section("Performance"),
    "celery-task-options": _celery_map("task_options"),
    "celery-send-options": _celery_map("send_options"),
    "celery-commands": _celery_map("commands"),
    "celery-signals": _celery_map("signals"),
    "signals": signals_reference,
    "cli": cli_reference,
    "settings": settings_reference,
    "celery-settings": celery_settings_map,
}


# -- repository files linked from pages --------------------------------------------------------


def _expand(text: str, where: str) -> str:
    """``text`` with its markers replaced by what they generate."""

    def generated(match: re.Match[str]) -> str:
        maker = GENERATORS.get(match.group(1))
        if maker is None:
            raise PluginError(f"{where}: unknown marker {match.group(0)}")
        return maker()

    return MARKER.sub(generated, text)


def _linked_sources(files: Files, docs_dir: Path) -> set[str]:
    found: set[str] = set()
    for file in files.documentation_pages():
        page_dir = (docs_dir / file.src_uri).parent
        if not file.abs_src_path:
            continue
        text = Path(file.abs_src_path).read_text()
        if "<!-- aqueue:readme" in text:  # generated text with repository links
            text = _expand(text, file.src_uri)
        for match in OUTSIDE.finditer(text):
            target = (page_dir / (match.group(1) + match.group(2))).resolve()
            if target.is_file() and docs_dir not in target.parents:
                found.add(target.relative_to(ROOT).as_posix())
    return found


def _source_page(rel: str) -> str:
    path = ROOT / rel
    language = LANGUAGES.get(path.suffix, "text")
    text = path.read_text().rstrip()
    fence = "`" * max(3, 1 + max((len(r) for r in re.findall(r"`+", text)), default=0))
    return f"# `{rel}`\n\n{fence}{language}\n{text}\n{fence}\n"


# -- mkdocs events -----------------------------------------------------------------------------


def on_files(files: Files, config: MkDocsConfig, **_: Any) -> Files:
    docs_dir = Path(config["docs_dir"]).resolve()
    for rel in sorted(_linked_sources(files, docs_dir)):
        page = File.generated(config, f"{SOURCE_DIR}/{rel}.md", content=_source_page(rel))
        page.inclusion = InclusionLevel.NOT_IN_NAV
        files.append(page)
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, **_: Any) -> str:
    markdown = _expand(markdown, page.file.src_uri)
    if page.file.src_uri.startswith(SOURCE_DIR + "/"):
        return markdown
    docs_dir = Path(config["docs_dir"]).resolve()
    page_dir = (docs_dir / page.file.src_uri).parent
    depth = len(Path(page.file.src_uri).parts) - 1

    def to_source(match: re.Match[str]) -> str:
        target = (page_dir / (match.group(1) + match.group(2))).resolve()
        if not target.is_file() or docs_dir in target.parents:
            return match.group(0)
        rel = target.relative_to(ROOT).as_posix()
        return f"]({'../' * depth}{SOURCE_DIR}/{rel}.md)"

    return OUTSIDE.sub(to_source, markdown)
