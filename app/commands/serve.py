"""`grok-desktop serve`: the loaded engine as an OpenAI-compatible API (app/api/server.py).

    grok-desktop serve (--model DIR | --demo) [--host H] [--port 1234] [--api-key KEY]
                       [--allow-remote] [--queue N] [--model-name NAME]
                       [--cors-origin ORIGIN ...]

Prints the URL once it listens (port 0 picks a free port, and the line says which), then
serves until Ctrl+C or SIGTERM. The key can come from GROK_DESKTOP_API_KEY instead of the
command line, which other users of the machine can read.

Web pages in a browser are refused (403) unless their origin is allowed with --cors-origin
(repeatable, e.g. http://localhost:3000): those get CORS headers and preflight answers.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from app.commands.generate import add_model_arguments

API_KEY_ENV = "GROK_DESKTOP_API_KEY"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the model as an OpenAI-compatible API")
    add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=1234, help="TCP port (0: any free port)")
    p.add_argument("--api-key", default=os.environ.get(API_KEY_ENV, ""), metavar="KEY",
                   help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV})")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a --host other than loopback (needs --api-key)")
    p.add_argument("--queue", type=int, default=8, metavar="N",
                   help="requests that may wait for the model before others get 503")
    p.add_argument("--model-name", default="", metavar="NAME",
                   help="model id clients see (default grok-2, or grok-2-demo)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let web pages from ORIGIN (e.g. http://localhost:3000) call the API "
                        "from a browser; repeatable (default: none, browsers are refused)")
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from app.api.server import ApiServer, check_address, check_origins, print_log
    from app.commands.generate import open_engine
    from app.errors import UserError
    from app.logs import setup_logging

    setup_logging()  # engine and server failures also go to the log file
    if args.queue < 0 or not 0 <= args.port < 65536:
        raise UserError("--queue must be >= 0 and --port between 0 and 65535")
    # Refuse an unsafe address before spending minutes loading Grok-2.
    check_address(args.host, args.allow_remote, args.api_key)
    origins = check_origins(args.cors_origin)
    engine = open_engine(args)
    server = ApiServer(engine, host=args.host, port=args.port, api_key=args.api_key,
                       allow_remote=args.allow_remote, model_id=args.model_name,
                       max_queue=args.queue, cors_origins=origins, log=print_log)
    server.start()
    key = "; API key required" if args.api_key else ""
    key += f"; web pages allowed from {', '.join(origins)}" if origins else ""
    print(f"Serving {engine.info.name} as '{server.model_id}' at {server.url}{key}; "
          "Ctrl+C stops", flush=True)
    _wait_for_signal()
    print("Stopping the server", file=sys.stderr, flush=True)
    server.stop()
    return 0


def _wait_for_signal() -> None:
    """Block until Ctrl+C or SIGTERM (a service manager's stop)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
