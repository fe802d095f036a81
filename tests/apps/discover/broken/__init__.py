"""A package whose tasks module fails to import."""
