"""``python -m aqueue``: the same as the ``aqueue`` command."""

from aqueue.cli import main

main()
