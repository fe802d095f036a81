"""Getting started, page 6: a settings module, read by ``app.config_from_object``.

Lowercase names are settings; anything else (imports, helpers, upper-case names) is skipped.
"""

# --8<-- [start:module]
from datetime import timedelta

broker_url = "memory://"
result_backend = "memory://"
task_serializer = "json"
accept_content = ["json"]
timezone = "Asia/Shanghai"
result_expires = timedelta(hours=12)  # a timedelta or seconds
task_routes = {"proj.reports.*": {"queue": "reports"}}
task_annotations = {"proj.tasks.add": {"rate_limit": "10/m"}}
worker_concurrency = 50  # coroutines in flight per worker
# --8<-- [end:module]
