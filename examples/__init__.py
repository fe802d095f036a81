"""Runnable examples; run them from the repository root with ``python -m examples.<name>``."""
