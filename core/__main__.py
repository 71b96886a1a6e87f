"""``python -m core``: the command line (:mod:`core.cli`)."""
from core.cli import main

raise SystemExit(main())
