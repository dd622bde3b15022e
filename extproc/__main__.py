"""``python -m extproc`` runs the command line."""

from extproc.cli import main

raise SystemExit(main())
