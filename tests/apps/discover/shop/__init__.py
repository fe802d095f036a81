"""A package whose tasks module autodiscover_tasks finds."""
