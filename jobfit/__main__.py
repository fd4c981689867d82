"""``python -m jobfit``: the same as the ``jobfit`` command."""

from jobfit.cli import main

main()
