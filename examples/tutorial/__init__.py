"""The code of the documentation site's Getting started pages (docs/getting-started/), one module
per page; each runs on its own (``python -m examples.tutorial.first_task``) on the memory broker
with a worker inside, and tests/test_tutorial.py runs them all."""
