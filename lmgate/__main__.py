"""``python -m lmgate`` runs the ``lmgate`` command."""

from lmgate.cli import main

raise SystemExit(main())
