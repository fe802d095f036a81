"""Result streaming and batch tasks, in one process (``python -m examples.streaming.demo``)."""
