"""``python -m genloom`` is the ``genloom`` command."""

from genloom.cli import main

main()
