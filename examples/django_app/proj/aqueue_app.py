"""The project's aqueue app (Celery's ``proj/celery.py``).

Run a worker: ``aqueue worker -A examples.django_app.proj.aqueue_app`` (from the repository
root). The tasks live in each application's ``tasks.py``, found with ``autodiscover_tasks()``:
with no argument it reads ``INSTALLED_APPS``, as Celery's does, and it imports them at the first
read of ``app.tasks`` (when the worker starts), so ``shop/tasks.py`` may import this module.
"""

from __future__ import annotations

import os

import django
from django.conf import settings

from aqueue import Aqueue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_app.proj.settings")
django.setup()  # a worker process needs the project's applications (and models) loaded

app = Aqueue("proj")
app.conf.update(settings.AQUEUE)
app.autodiscover_tasks()
