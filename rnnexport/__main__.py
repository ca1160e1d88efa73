"""``python -m rnnexport``: the same as the ``rnnexport`` command."""

from rnnexport.cli import main

main()
