"""Finding an app's tasks in other modules: Celery's ``include=`` and ``autodiscover_tasks()``.

A Django-style project defines its app in one module and its tasks in each application's
``tasks.py``, which import the app: importing them from the app's own module would be circular.
So, as in Celery, both are imported lazily: on the first read of ``app.tasks`` (a worker reads
it when it starts, ``send_task`` by name reads it), after every module involved has been
imported.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable
from typing import Any

from aqueue.exceptions import ConfigurationError

Packages = Iterable[str] | Callable[[], Iterable[str]] | None


def import_modules(modules: Iterable[str]) -> None:
    """Import each module of ``include=``.

    Raises:
        ConfigurationError: a module is not found, or its import failed (the error is named).
    """
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if not is_missing(exc, name):
                raise _import_failed("include", name, exc) from exc
            raise ConfigurationError(
                f"include: module {name!r} not found; give a module path importable from the "
                f"working directory (or on sys.path)"
            ) from exc
        except Exception as exc:
            raise _import_failed("include", name, exc) from exc


def autodiscover(packages: Packages, related_name: str = "tasks") -> None:
    """Import ``<package>.<related_name>`` for each package that has one.

    Args:
        packages: package names, a function returning them (called now), or ``None`` for the
            ``INSTALLED_APPS`` of a configured Django project.
        related_name: the module to look for in each package.

    Raises:
        ConfigurationError: a package is not found, a ``tasks`` module was found but its import
            failed, or ``packages`` is ``None`` and Django is not configured.
    """
    names = _django_apps() if packages is None else packages
    for package in names() if callable(names) else names:
        module = f"{package}.{related_name}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                continue  # a package without tasks
            if is_missing(exc, package):
                raise ConfigurationError(
                    f"autodiscover_tasks: package {package!r} not found"
                ) from exc
            raise _import_failed("autodiscover_tasks", module, exc) from exc
        except Exception as exc:
            raise _import_failed("autodiscover_tasks", module, exc) from exc


def is_missing(exc: ModuleNotFoundError, module: str) -> bool:
    """True when ``exc`` says ``module`` itself, or a package above it, does not exist (rather
    than a module that ``module``'s own code imports)."""
    return exc.name is not None and f"{module}.".startswith(f"{exc.name}.")


def _import_failed(where: str, module: str, exc: BaseException) -> ConfigurationError:
    return ConfigurationError(
        f"{where}: module {module!r} was found but its import failed: {type(exc).__name__}: {exc}"
    )


def _django_apps() -> list[str]:
    """The package of each application in a configured Django project's ``INSTALLED_APPS``."""
    try:  # Django is optional: looked up only here
        settings: Any = importlib.import_module("django.conf").settings
        apps: Any = importlib.import_module("django.apps").apps
    except ImportError:
        raise ConfigurationError(
            "autodiscover_tasks() without packages reads Django's INSTALLED_APPS, and Django is "
            "not installed: pass the packages, e.g. autodiscover_tasks(['shop', 'billing'])"
        ) from None
    if not (os.environ.get("DJANGO_SETTINGS_MODULE") or settings.configured):
        raise ConfigurationError(
            "autodiscover_tasks() without packages reads Django's INSTALLED_APPS: set "
            "DJANGO_SETTINGS_MODULE (or pass the packages)"
        )
    if apps.ready:
        return [str(config.name) for config in apps.get_app_configs()]
    return [str(name) for name in settings.INSTALLED_APPS]
