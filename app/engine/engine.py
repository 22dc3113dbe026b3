"""Engine: a loaded Grok-2 model with its tokenizer, chat format and generation.

What the worker thread, the CLI and the API server hold. It keeps one KV cache and reuses the
longest shared prefix with the previous request, so a chat turn only prefills the new text.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import torch

from app.engine.chat_format import STOP_STRINGS, encode_chat, stop_token_ids
from app.engine.config import check_folder, config_hash, load_config
from app.engine.generate import new_generator, step_tokens, stream_events
from app.engine.model import Grok2
from app.engine.tokenizer import Tokenizer, load_tokenizer
from app.engine.weights import default_device, load_model
from app.errors import UserError
from app.messages import Finished, GenerationParams, ModelInfo, Progress, ReplyStream

ProgressCallback = Callable[[Progress], None]
DEFAULT_CONTEXT = 8192


class Engine:
    def __init__(self, model: Grok2, tokenizer: Tokenizer, info: ModelInfo) -> None:
        self.model, self.tokenizer, self.info = model, tokenizer, info
        self.context_length = info.context_length
        self.stop_ids = stop_token_ids(tokenizer)
        self._cached_ids: list[int] = []
        self._lock = threading.Lock()  # one generation at a time (server requests queue)

    # ---- loading --------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device | None = None,
             dtype: torch.dtype | None = None, quant: str | None = None,
             context_length: int | None = None, progress: ProgressCallback | None = None,
             is_demo: bool = False, budgets: tuple[int, int] | None = None) -> Engine:
        """Load a Grok-2 folder (official or prepared). On CUDA, or with a quantization or
        memory budgets (GPU bytes, CPU bytes), the placement plan decides where each weight
        lives (offload.py); on a CPU-only run without them, every weight sits on the CPU."""
        from app.engine.prepare import is_prepared

        folder = Path(path)
        if quant not in (None, "bf16", "float32", "float16", "int8", "int4"):
            raise UserError(f"unknown quantization {quant!r}; use int4, int8, bf16 or float32")
        device = torch.device(device) if device is not None else default_device()
        if dtype is None and quant:
            dtype = {"bf16": torch.bfloat16, "float32": torch.float32,
                     "float16": torch.float16}.get(quant)
        check_folder(folder)  # one wording for a missing folder everywhere (config.py)
        cfg = load_config(folder)  # a missing or bad config.json is the first thing to report
        tokenizer = load_tokenizer(folder)
        ctx = min(context_length or DEFAULT_CONTEXT, cfg.max_position_embeddings)
        planned = (quant in ("int8", "int4") or is_prepared(folder) or budgets is not None
                   or device.type == "cuda")
        if planned:
            from app.engine.loader import detect_budgets, load_engine_model

            budgets = budgets or detect_budgets()
            if device.type == "cpu":
                budgets = (0, budgets[1])
            model = load_engine_model(folder, budgets, _eta(progress), quant=quant, dtype=dtype,
                                      context=ctx)
        else:
            _check_ram(folder, cfg, dtype or torch.float32)
            model = load_model(folder, device=device, dtype=dtype, progress=_eta(progress))
        model.setup_cache(ctx)
        plan = getattr(model, "offload_plan", None)
        weight_dtype = model.lm_head.weight.dtype
        where = device.type if plan is None else ("cuda+cpu" if plan.has_gpu else "cpu")
        info = ModelInfo(
            name="Demo (tiny model, not Grok-2)" if is_demo else f"Grok-2 ({folder.name})",
            folder=str(folder), config_hash=config_hash(folder),
            quantization=plan.quant if plan else str(weight_dtype).removeprefix("torch."),
            device=where, context_length=ctx, is_demo=is_demo)
        return cls(model, tokenizer, info)

    @classmethod
    def demo(cls, progress: ProgressCallback | None = None, device: str | None = None) -> Engine:
        """The built-in tiny demo model: for trying the app. It is not Grok-2: a few MB trained
        on a few pages of sample text, so its replies are fluent-looking but not meaningful."""
        from app.engine.tiny import ensure_demo_checkpoint

        if progress:
            progress(Progress("preparing the demo model", 0, 1))
        return cls.load(ensure_demo_checkpoint(), device=device or "cpu", dtype=torch.float32,
                        progress=progress, is_demo=True)

    def unload(self) -> None:
        self.model.cache = None
        del self.model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ---- prompts --------------------------------------------------------------------------

    def chat_prompt_ids(self, messages: list[dict], continue_text: str | None = None) -> list[int]:
        """Token ids of the chat prompt; message content is literal text (see encode_chat)."""
        return encode_chat(self.tokenizer, messages, continue_text=continue_text)

    def count_tokens(self, messages: list[dict]) -> int:
        return len(self.chat_prompt_ids(messages))

    # ---- generation -----------------------------------------------------------------------

    def stream_chat(self, messages: list[dict], params: GenerationParams,
                    cancel: threading.Event | None = None,
                    continue_text: str | None = None) -> ReplyStream:
        ids = self.chat_prompt_ids(messages, continue_text)
        return self.stream_ids(ids, params, cancel, STOP_STRINGS)

    def stream_prompt(self, prompt: str, params: GenerationParams,
                      cancel: threading.Event | None = None) -> ReplyStream:
        return self.stream_ids(self.tokenizer.encode(prompt), params, cancel, ())

    def stream_ids(self, ids: list[int], params: GenerationParams,
                   cancel: threading.Event | None = None,
                   stop_strings: tuple[str, ...] = ()) -> ReplyStream:
        """Prefill `ids` (reusing the cached prefix) and stream the reply."""
        if not ids:
            raise UserError("the prompt is empty")
        room = self.context_length - len(ids)
        if room < 1:
            raise UserError(f"the conversation is {len(ids)} tokens, more than the context of "
                            f"{self.context_length}; start a new chat or raise the context "
                            "length in Settings")
        return self._run(ids, params, cancel, stop_strings, room)

    def _run(self, ids, params, cancel, stop_strings, room) -> ReplyStream:
        try:
            yield from self._generate(ids, params, cancel, stop_strings, room)
        except torch.cuda.OutOfMemoryError as exc:
            self._cached_ids = []
            torch.cuda.empty_cache()
            raise UserError("the GPU ran out of memory while generating; lower the context "
                            "length or the GPU memory budget in Settings") from exc

    def _generate(self, ids, params, cancel, stop_strings, room) -> ReplyStream:
        with self._lock:
            generator, seed = new_generator(params)
            reuse = _common_prefix(self._cached_ids, ids)
            self._cached_ids = []  # the cache is being rewritten; invalid if we stop midway
            tokens = _recording(step_tokens(self.model, ids, params, generator, reuse), ids)
            history = tokens.history
            for event in stream_events(tokens, self.tokenizer, prompt_tokens=len(ids),
                                       params=params, stop_ids=self.stop_ids,
                                       stop_strings=stop_strings, cancel=cancel,
                                       max_total=room):
                if isinstance(event, Finished):
                    event = replace(event, seed=seed)
                yield event
            # The cache holds the prompt and every token that was fed back through the model,
            # i.e. all sampled tokens but the last; if none was sampled, prefill never ran.
            self._cached_ids = history[:-1] if len(history) > len(ids) else ids[:reuse]


class _recording:
    """Wraps the token iterator and remembers prompt + sampled ids, for prefix reuse."""

    def __init__(self, tokens: Iterator[int], prompt: list[int]) -> None:
        self._tokens, self.history = tokens, list(prompt)

    def __iter__(self) -> _recording:
        return self

    def __next__(self) -> int:
        token = next(self._tokens)
        self.history.append(token)
        return token


def _common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the shared prefix, at most len(b) - 1 (one token must be run for logits)."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return min(n, len(b) - 1)


def _check_ram(folder: Path, cfg, dtype: torch.dtype) -> None:
    """Refuse a plain CPU load that cannot fit in RAM, before the OS kills the process."""
    from app.engine.loader import detect_budgets
    from app.engine.plan import GB, model_bytes

    need = model_bytes(cfg, "float32" if dtype == torch.float32 else "bf16")
    have = detect_budgets()[1]
    if need > 0.9 * have:
        raise UserError(
            f"{folder}: this model needs {need / GB:.0f} GB of RAM as {str(dtype)[6:]} on the "
            f"CPU, and this machine has {have / GB:.0f} GB; prepare an int4 copy "
            f"(`grok-desktop prepare --model {folder} --quant int4`) or use a GPU; "
            "`grok-desktop plan` shows what fits")


def _eta(progress: ProgressCallback | None):
    if progress is None:
        return None
    start = time.perf_counter()

    def report(stage: str, done: int, total: int) -> None:
        elapsed = time.perf_counter() - start
        eta = elapsed * (total - done) / done if done else None
        progress(Progress(stage, done, total, eta))

    return report
