"""The Django project: settings, URLs, and the aqueue app (``proj.aqueue_app``)."""
