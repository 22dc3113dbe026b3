"""Entry script of the frozen app: the same `app.cli.main` the `grok-desktop` console script runs."""

from __future__ import annotations

import multiprocessing

from app.cli import main

if __name__ == "__main__":
    multiprocessing.freeze_support()  # a frozen Windows/macOS child process must stop here
    raise SystemExit(main())
