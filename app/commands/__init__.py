"""Command-line subcommands, one module per feature (see app/cli.py)."""
