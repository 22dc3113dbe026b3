"""Command line entry point: no arguments opens the GUI, subcommands are in `app/commands/`.

Each command module exposes `add_parser(subparsers)` and `run(args) -> int`, and is imported
only when its command runs, so `grok-desktop --version` never imports torch or Qt.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from app import __version__, paths
from app.errors import UserError

# command name -> module under app.commands that implements it
COMMANDS = {
    "generate": "generate",
    "ask": "chat",
    "list": "chat",
    "export": "chat",
    "import": "chat",
    "plan": "model_tools",
    "prepare": "model_tools",
    "bench": "model_tools",
    "serve": "serve",
    "download": "download",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grok-desktop", description="Chat with Grok-2 locally.")
    parser.add_argument("--version", action="version", version=f"grok-desktop {__version__}")
    parser.add_argument("--demo", action="store_true", help="open the GUI on the tiny demo model")
    parser.add_argument("--model", metavar="DIR", help="open the GUI with this Grok-2 folder")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    seen = set()
    for module_name in COMMANDS.values():
        if module_name in seen:
            continue
        seen.add(module_name)
        module = _command_module(module_name)
        if module is not None:
            module.add_parser(sub)
    return parser


def _command_module(name: str):
    try:
        return importlib.import_module(f"app.commands.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"app.commands.{name}":
            return None  # command not built in this version
        raise


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        paths.torch_cache_env()  # before any command imports torch
        if args.command is None:
            from app.gui.xcb_check import check_xcb_libraries

            check_xcb_libraries()  # one line and status 2 instead of Qt's abort
            from app.gui.main import run_gui

            return run_gui(demo=args.demo, model=args.model)
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"grok-desktop: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resume = "; run the same command again to resume" if args.command in (
            "download", "prepare") else ""
        print(f"grok-desktop: interrupted{resume}", file=sys.stderr)
        return 130
