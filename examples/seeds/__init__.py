"""aqueue counterparts of the examples in five Celery tutorials; see README.md in this folder."""
