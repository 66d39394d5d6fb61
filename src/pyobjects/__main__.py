"""``python -m pyobjects``: the same as the ``pyobjects`` command."""

from ._cli import main

main()
