"""`grok-desktop ask | list | export | import`: the conversation store from the command line.

`ask` stores both messages exactly as the GUI does (same Store calls, same ReplyWriter), so a
conversation started in a terminal continues in the app and the other way round.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from app.commands.generate import add_model_arguments, add_sampling_arguments, open_engine
from app.errors import StorageError, UserError

if TYPE_CHECKING:
    from app.messages import GenerationParams
    from app.settings import Settings
    from app.store.reply import ReplyWriter
    from app.store.store import Store

_SAMPLING = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_tokens", "seed")


def add_parser(sub: argparse._SubParsersAction) -> None:
    ask = sub.add_parser("ask", help="send a message, stream the reply, keep both in history")
    add_model_arguments(ask, required=False)
    ask.add_argument(
        "--conversation",
        "-c",
        metavar="ID",
        help="continue this conversation: its number (`grok-desktop list`) or uuid",
    )
    ask.add_argument("--system", metavar="TEXT", help="the conversation's system prompt")
    add_sampling_arguments(ask)
    ask.set_defaults(**dict.fromkeys(_SAMPLING))  # unset: the conversation's own settings
    ask.add_argument("text", nargs="+", metavar="TEXT", help="the message ('-' reads stdin)")
    ask.set_defaults(func=run_ask)

    lst = sub.add_parser("list", help="recent conversations with their ids")
    lst.add_argument("--limit", type=int, default=30, metavar="N")
    lst.add_argument("--search", metavar="WORDS", help="only conversations containing the words")
    lst.add_argument("--trash", action="store_true", help="list the trash instead")
    lst.add_argument(
        "--json",
        action="store_true",
        help="print a JSON array (id, uuid, title, updated, messages, pinned) for scripts",
    )
    lst.set_defaults(func=run_list)

    exp = sub.add_parser("export", help="write conversations as md, json, html, txt or pdf")
    which = exp.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--conversation",
        "-c",
        action="append",
        metavar="ID",
        help="a conversation number (`grok-desktop list`) or uuid (repeat for several)",
    )
    which.add_argument("--all", action="store_true", help="every conversation not in the trash")
    exp.add_argument(
        "--format",
        choices=["md", "json", "html", "txt", "pdf"],
        help="the file format (default: from the --out extension)",
    )
    exp.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="PATH",
        help="a file (its extension picks the format), or a folder (one file per conversation)",
    )
    exp.set_defaults(func=run_export)

    imp = sub.add_parser("import", help="import a Grok Desktop JSON export or ChatGPT's export")
    imp.add_argument(
        "path",
        type=Path,
        metavar="PATH",
        help="our JSON export, or ChatGPT's export: its .zip, its folder or conversations.json",
    )
    imp.add_argument(
        "--strict",
        action="store_true",
        help="import nothing if any conversation of a ChatGPT export is broken "
        "(default: skip and list the broken ones)",
    )
    imp.set_defaults(func=run_import)


# ---- ask ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AskResult:
    conversation_id: int
    user_message_id: int
    reply_id: int
    reason: str  # stop | length | cancelled


def run_ask(args: argparse.Namespace) -> int:
    from app.settings import load_settings
    from app.store.store import Store

    text = " ".join(args.text)
    if text == "-":
        text = sys.stdin.read()
    if not text.strip():
        raise UserError("the message is empty")
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")  # a terminal that cannot show some characters
    defaults = load_settings()
    _params(defaults.sampling, _overrides(args))  # bad values fail before a long model load
    if not args.model and not args.demo:  # as the GUI does: the model chosen in Settings
        args.model = configured_model(defaults)
        if args.context is None:
            args.context = defaults.context_tokens
        if args.device is None and defaults.device != "auto":
            args.device = defaults.device
    with Store.open() as store:
        if args.conversation is not None:
            args.conversation = store.resolve_conversation(args.conversation)
            _check_open(store, args.conversation)
        engine = open_engine(args)
        conv_id = _prepare_conversation(store, args, defaults)
        result = ask(store, engine, conv_id, text, out=sys.stdout, default_params=defaults.sampling)
    print(
        f"[conversation {result.conversation_id} · reply {result.reply_id} · {result.reason}]",
        file=sys.stderr,
    )
    return 0


def configured_model(settings: Settings) -> str:
    """The Grok-2 folder chosen in the app's Settings, for `ask` without --model/--demo.
    Raises UserError when none is configured, or it is no longer a usable folder."""
    from app.settings import check_model_folder

    folder = settings.model_folder
    if not folder and settings.backend == "remote":
        raise UserError("the app uses a remote server, and `ask` runs a local model: pass "
                        "--model DIR or --demo")
    if not folder:
        raise UserError("no model configured: pass --model DIR or --demo, or choose the "
                        "Grok-2 folder in the app's Settings")
    check = check_model_folder(folder)
    if not check.ok:
        raise UserError(f"the configured model folder {folder} cannot be used "
                        f"({check.summary()}); fix it in Settings or pass --model DIR")
    return folder


def ask(
    store: Store,
    engine: Any,
    conversation_id: int,
    text: str,
    *,
    out: TextIO,
    cancel: threading.Event | None = None,
    default_params: GenerationParams | None = None,
) -> AskResult:
    """Add `text` as a user message on the current branch and stream the reply into the store.

    `engine` is anything with `info` and `stream_chat(messages, params, cancel)`. A
    conversation without settings of its own uses `default_params` (the app's settings), as
    the GUI does.
    """
    from app.store.reply import ReplyWriter

    conv = store.get_conversation(conversation_id)
    user_id = store.add_message(conversation_id, conv.current_leaf_id, "user", text)
    conv = store.get_conversation(conversation_id)
    params = conv.generation_params(default_params)
    reply_id = store.begin_reply(conversation_id, user_id, engine.info, params)
    writer = ReplyWriter(store, reply_id)
    reason = stream_reply(engine, conv.chat_messages(), params, writer, out, cancel)
    return AskResult(conversation_id, user_id, reply_id, reason)


def stream_reply(
    engine: Any,
    messages: list[dict[str, str]],
    params: GenerationParams,
    writer: ReplyWriter,
    out: TextIO,
    cancel: threading.Event | None = None,
    continue_text: str | None = None,
) -> str:
    """Print and store the engine's reply; returns the finish reason.

    Ctrl+C stores the text so far as a `cancelled` reply; a full or read-only disk stops
    generation (StorageError, the text so far kept as far as the disk allows); an engine
    failure stores the text so far with status `error` and re-raises.
    """
    from app.messages import Finished

    cancel = cancel or threading.Event()
    events = engine.stream_chat(messages, params, cancel, continue_text=continue_text)
    try:
        for event in events:
            if not isinstance(event, Finished):
                out.write(event.text)
                out.flush()
            writer.feed(event)
        if not writer.done:  # the stream ended without a Finished: treat as cut off
            writer.interrupt()
        out.write("\n")
        out.flush()  # before anything goes to stderr: `2>&1` output stays in order
        return writer.store.get_message(writer.message_id).finish_reason or "interrupted"
    except KeyboardInterrupt:
        cancel.set()
        out.write("\n")
        writer.finish("cancelled")
        raise
    except StorageError:
        cancel.set()
        _keep_what_fits(writer)
        raise
    except Exception as exc:
        writer.fail(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()


def _keep_what_fits(writer: ReplyWriter) -> None:
    try:
        writer.interrupt()
    except StorageError:
        pass  # the last periodic write stays; the next open marks the row interrupted


def _check_open(store: Store, conv_id: int) -> None:
    conv = store.get_conversation(conv_id)
    if conv.deleted_at is not None:
        raise UserError(f"conversation {conv_id} is in the trash; restore it in the app first")


def _prepare_conversation(store: Store, args: argparse.Namespace, defaults: Settings) -> int:
    """The conversation to use; --system and sampling options become its own settings."""
    overrides = _overrides(args)
    if args.conversation is None:
        system = defaults.system_prompt if args.system is None else args.system
        params = _params(defaults.sampling, overrides) if overrides else None
        return store.create_conversation(system_prompt=system, params=params)
    conv = store.get_conversation(args.conversation)
    if overrides or args.system is not None:
        base = conv.generation_params(defaults.sampling)
        params = _params(base, overrides) if overrides else None
        store.update_conversation(conv.id, system_prompt=args.system, params=params)
    return conv.id


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in _SAMPLING if getattr(args, k) is not None}


def _params(base: GenerationParams, overrides: dict[str, Any]) -> GenerationParams:
    try:
        return replace(base, **overrides)
    except ValueError as exc:
        raise UserError(str(exc)) from exc


# ---- list, export, import -----------------------------------------------------------------


def run_list(args: argparse.Namespace) -> int:
    from app.exchange.render import format_time
    from app.store.store import Store

    with Store.open() as store:
        if args.json:
            print(json.dumps(_list_json(store, args), ensure_ascii=False, indent=2))
            return 0
        if args.search:
            hits = store.search(args.search, limit=args.limit)
            if not hits:
                print(f"no conversation matches {args.search!r}", file=sys.stderr)
            for hit in hits:
                print(f"{hit.conversation_id:>6}  {hit.title}\n        {_one_line(hit.snippet)}")
            return 0
        items = store.list_trash() if args.trash else store.list_conversations(limit=args.limit)
    if not items:
        print("the trash is empty" if args.trash else "no conversations yet")
    for s in items:
        when = format_time(s.deleted_at if args.trash and s.deleted_at else s.updated_at)
        print(f"{s.id:>6}  {when}  {'* ' if s.pinned else ''}{s.title}")
    return 0


def _list_json(store: Store, args: argparse.Namespace) -> list[dict[str, Any]]:
    """`list --json`: one object per conversation, in the order the plain listing uses."""
    from app.store.conversation import iso_from_ms

    snippets: dict[int, str] = {}
    items: list[Any]  # ConversationSummary, or Conversation for search hits (same fields)
    if args.search:
        hits = store.search(args.search, limit=args.limit)
        snippets = {h.conversation_id: h.snippet for h in hits}
        items = [store.get_conversation(h.conversation_id) for h in hits]
    else:
        items = store.list_trash() if args.trash else store.list_conversations(limit=args.limit)
    counts = store.message_counts([s.id for s in items])
    out = []
    for s in items:
        row: dict[str, Any] = {
            "id": s.id, "uuid": s.uuid, "title": s.title,
            "updated": iso_from_ms(round(s.updated_at * 1000)),
            "messages": counts[s.id], "pinned": s.pinned,
        }
        if s.deleted_at is not None:
            row["deleted"] = iso_from_ms(round(s.deleted_at * 1000))
        if s.id in snippets:
            row["snippet"] = snippets[s.id]
        out.append(row)
    return out


def _one_line(text: str, width: int = 100) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def run_export(args: argparse.Namespace) -> int:
    from app.exchange.export import export_conversations, format_for
    from app.store.store import Store

    fmt = format_for(args.out, args.format)
    with Store.open() as store:
        if args.all:
            ids = store.all_conversation_ids()
        else:
            ids = [store.resolve_conversation(ref) for ref in args.conversation]
        written = export_conversations(store, ids, fmt, args.out)
    where = written[0] if len(written) == 1 else f"{len(written)} files in {args.out}"
    print(f"exported {len(ids)} conversation{'s' * (len(ids) != 1)} to {where}")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from app.exchange.importers import import_file
    from app.store.store import Store

    progress = _ImportProgress(sys.stderr) if sys.stderr.isatty() else None
    with Store.open() as store:
        try:
            result = import_file(store, args.path, strict=args.strict, progress=progress)
        finally:
            if progress is not None:
                progress.clear()
    print(result.summary(str(args.path)))
    return 0


class _ImportProgress:
    """`reading conversations 120/900` on one terminal line, for files with many."""

    MIN_TOTAL = 50

    def __init__(self, out: TextIO) -> None:
        self.out, self.shown, self.last = out, False, -1.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if total < self.MIN_TOTAL or (now - self.last < 0.1 and done < total):
            return
        self.last, self.shown = now, True
        self.out.write(f"\rreading conversations {done}/{total}")
        self.out.flush()

    def clear(self) -> None:
        if self.shown:
            self.out.write("\r\033[K")
            self.out.flush()
