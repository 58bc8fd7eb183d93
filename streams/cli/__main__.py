"""``python -m streams.cli`` runs the ``cronorch`` command."""

from streams.cli.main import main

raise SystemExit(main())
