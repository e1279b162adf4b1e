"""``python -m codesync``: the same as the ``codesync`` command."""

from codesync.cli import main

raise SystemExit(main())
