"""Django settings of the example: no database, one application (``shop``).

aqueue's settings are one section, ``AQUEUE`` (lower-case aqueue names), read by
``proj/aqueue_app.py``: the broker from ``$AQUEUE_BROKER_URL``, as the worker reads it.
"""

from __future__ import annotations

import os

SECRET_KEY = "example-only-not-secret"  # an example project: never deploy this key
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["examples.django_app.shop"]
ROOT_URLCONF = "examples.django_app.proj.urls"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

AQUEUE = {
    "broker_url": os.environ.get("AQUEUE_BROKER_URL", "sqlite:///aqueue-django.db"),
    "task_default_queue": os.environ.get("AQUEUE_QUEUE", "default"),
}
