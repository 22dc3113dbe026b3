"""`python -m app` runs the command line (no arguments opens the GUI)."""

from app.cli import main

raise SystemExit(main())
