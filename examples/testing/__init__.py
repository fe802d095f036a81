"""The testing how-to's example (docs/howto/testing.md): a tasks module and its tests with the
pytest plugin; ``tests/test_tutorial.py`` runs them with pytest."""
