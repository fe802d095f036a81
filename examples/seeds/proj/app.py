"""The app of the ``proj`` package (Celery's ``proj/celery.py``).

As Celery's ``Celery('proj', include=['proj.tasks'])``: the worker imports the task modules
named by ``include=`` when it starts (at the first read of ``app.tasks``), so
``aqueue worker -A examples.seeds.proj.app`` finds ``add`` and ``mul`` although this module does
not import them (``tasks.py`` imports this one). ``-A examples.seeds.proj.tasks`` works too. The
URLs are not given here but in ``config.py``, as in the tutorial.
"""

from __future__ import annotations

from aqueue import Aqueue

app = Aqueue("proj", include=["examples.seeds.proj.tasks"])
app.config_from_object("examples.seeds.proj.config")
