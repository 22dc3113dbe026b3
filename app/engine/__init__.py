"""The Grok-2 engine: torch only, never Qt.

Public contract (docs/architecture.md#the-engine-contract):
    load_model(path, *, device="cpu", dtype=torch.float32) -> Grok2 (nn.Module; forward(ids) -> logits)
    load_tokenizer(path) -> Tokenizer
    Engine.load(path, ...) -> Engine   # model + tokenizer + generation, what the app and CLI use

Imports are lazy so that `import app.engine` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.engine.engine import Engine  # noqa: F401  (re-exported lazily below)
    from app.engine.model import Grok2
    from app.engine.tokenizer import Tokenizer


def load_model(path: Any, *, device: Any = "cpu", dtype: Any = None) -> Grok2:
    from app.engine.weights import load_model as _load

    return _load(path, device=device, dtype=dtype)


def load_tokenizer(path: Any) -> Tokenizer:
    from app.engine.tokenizer import load_tokenizer as _load

    return _load(path)


def __getattr__(name: str) -> Any:
    if name == "Engine":
        from app.engine.engine import Engine

        return Engine
    raise AttributeError(name)
