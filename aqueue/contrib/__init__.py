"""Optional integrations, each behind an extra: ``aqueue[prometheus]`` (:mod:`.prometheus`),
``aqueue[otel]`` (:mod:`.otel`). Importing one without its extra raises ``ImportError`` naming
the extra to install."""
