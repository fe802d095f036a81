"""The app of the ``proj`` package (Celery's ``proj/celery.py``).

Celery's ``Celery('proj', include=['proj.tasks'])`` makes the worker import the task modules;
aqueue has no ``include``: the worker imports what ``-A`` names, so start it with the tasks
module, ``aqueue worker -A examples.seeds.proj.tasks``, which imports this app. The URLs are not
given here but in ``config.py``, as in the tutorial.
"""

from __future__ import annotations

from aqueue import Aqueue

app = Aqueue("proj")
app.config_from_object("examples.seeds.proj.config")
