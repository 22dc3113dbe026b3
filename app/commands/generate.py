"""`grok-desktop generate`: one chat turn from the command line
(docs/architecture.md#command-line)."""

from __future__ import annotations

import argparse
import json
import sys
import threading

from app.errors import UserError


def add_model_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """--model DIR | --demo, plus device and dtype; shared by generate, ask and serve
    (`required=False`: the command falls back to the model configured in the app)."""
    which = parser.add_mutually_exclusive_group(required=required)
    which.add_argument("--model", metavar="DIR",
                       help="the Grok-2 folder (official layout, or one made by prepare or "
                            "download --keep-prepared-only)")
    which.add_argument("--demo", action="store_true", help="the built-in tiny demo model (not Grok-2)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--dtype", choices=["bf16", "float16", "float32"],
                        help="weight dtype (default: bf16 on cuda, float32 on cpu)")
    parser.add_argument("--context", type=int, metavar="N", help="context length in tokens")


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--temperature", type=float, default=0.7, help="0 is greedy")
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--min-p", type=float, default=0.0)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--seed", type=int)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate one reply and print it")
    add_model_arguments(p)
    p.add_argument("--prompt", required=True, help="the user message")
    p.add_argument("--system", help="a system prompt")
    add_sampling_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON object with ids and stats")
    p.set_defaults(func=run_generate)


def sampling_params(args: argparse.Namespace):
    from app.messages import GenerationParams

    try:
        return GenerationParams(
            temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, min_p=args.min_p,
            repetition_penalty=args.repetition_penalty, max_tokens=args.max_tokens,
            seed=args.seed)
    except ValueError as exc:
        raise UserError(str(exc)) from exc


def open_engine(args: argparse.Namespace, quiet: bool = False):
    """Load the engine the arguments name, with a one-line progress display on stderr."""
    from app.engine.engine import Engine

    def progress(p) -> None:
        if not quiet and sys.stderr.isatty() and p.total:
            sys.stderr.write(f"\r{p.stage}: {100 * p.done // p.total}%")
            sys.stderr.flush()

    if args.demo:
        engine = Engine.demo(progress=progress, device=args.device)
    else:
        import torch

        dtype = {None: None, "bf16": torch.bfloat16, "float16": torch.float16,
                 "float32": torch.float32}[args.dtype]
        engine = Engine.load(args.model, device=args.device, dtype=dtype,
                             context_length=args.context, progress=progress)
    if not quiet and sys.stderr.isatty():
        sys.stderr.write("\r\033[K")
    return engine


def run_generate(args: argparse.Namespace) -> int:
    from app.engine.generate import generate_text
    from app.messages import Finished

    params = sampling_params(args)
    engine = open_engine(args, quiet=args.json)
    messages = ([{"role": "system", "content": args.system}] if args.system else [])
    messages.append({"role": "user", "content": args.prompt})
    prompt_ids = engine.chat_prompt_ids(messages)
    cancel = threading.Event()
    events = engine.stream_ids(prompt_ids, params, cancel, stop_strings=_stops())
    if args.json:
        try:
            text, ids, done = generate_text(events)
        except KeyboardInterrupt:
            return 130
        print(json.dumps(_result(engine, text, ids, prompt_ids, done), ensure_ascii=False))
        return 0
    try:
        for event in events:
            if isinstance(event, Finished):
                print()
                _summary(event)
            else:
                sys.stdout.write(event.text)
                sys.stdout.flush()
    except KeyboardInterrupt:
        cancel.set()
        print()
        return 130
    return 0


def _stops() -> tuple[str, ...]:
    from app.engine.chat_format import STOP_STRINGS

    return STOP_STRINGS


def _summary(done) -> None:
    s = done.stats
    sys.stdout.flush()  # the reply's final newline reaches a shared pipe or file before this
    print(f"[{done.reason}: {s.prompt_tokens} prompt + {s.completion_tokens} tokens, "
          f"first token {s.ttft_s:.2f} s, {s.tokens_per_s:.1f} tok/s]", file=sys.stderr)


def _result(engine, text: str, ids: list[int], prompt_ids: list[int], done) -> dict:
    s = done.stats
    return {
        "text": text, "token_ids": ids, "prompt_token_ids": prompt_ids,
        "finish_reason": done.reason, "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.completion_tokens, "ttft_s": s.ttft_s,
        "tokens_per_s": s.tokens_per_s, "total_s": s.total_s, "seed": done.seed,
        "model": engine.info.to_dict(),
    }
