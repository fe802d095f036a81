"""A Celery-style layout for the include= and autodiscover_tasks tests: the app in ``app.py``,
tasks in modules that import it."""
