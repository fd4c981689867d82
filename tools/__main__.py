"""``python -m tools``: the harness's command line (see ``tools/cli.py``)."""

from tools.cli import main

main()
