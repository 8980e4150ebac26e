"""``python -m conveyor.cli``: the conveyor command line."""

from conveyor.cli.main import main

main()
