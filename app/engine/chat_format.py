"""Grok-2's chat prompt format and its stop conditions (docs/grok2.md#chat-template,
docs/grok2.md#stop-rules).

The template is the one SGLang, vLLM and llama.cpp ship for Grok-2: plain-text turns, each
closed by the special token `<|separator|>` and a blank line, no BOS. The rendered string is
encoded with `Tokenizer.encode`, which turns the `<|separator|>` text into the special token.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from app.engine.tokenizer import SEPARATOR

if TYPE_CHECKING:
    from app.engine.tokenizer import Tokenizer

# The model card's example: "Human: What is your name?<|separator|>\n\nAssistant:".
GENERATION_PROMPT = "Assistant:"  # no trailing space: the model writes the space itself

# A model that runs past the end of its turn without a stop token goes on to write the user's
# next turn; cut the reply before it (docs/grok2.md#stop-rules; SGLang's own test clients stop on
# similar strings). Engines should drop the matched text and finish with reason "stop".
STOP_STRINGS = ("\nHuman:",)


def _turn(role: str, content: str) -> str:
    if role == "user":
        return f"Human: {content.strip()}{SEPARATOR}\n\n"
    if role == "system":
        return f"System: {content.strip()}{SEPARATOR}\n\n"
    if role == "assistant":
        # Not stripped, exactly as the reference template does.
        return f"Assistant: {content}{SEPARATOR}\n\n"
    return ""  # other roles (tool, ...) are not part of Grok-2's format


def render_chat(
    messages: Iterable[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    continue_text: str | None = None,
) -> str:
    """The prompt text for messages ({"role", "content"} mappings), in order.

    continue_text resumes an interrupted assistant reply: the prompt ends with "Assistant:"
    followed by that text verbatim, with no separator, so the model carries on mid-reply as if
    it had never stopped. Pass exactly what the model produced after "Assistant:" (including
    its leading space, if any); it implies the generation prompt.
    """
    text = "".join(_turn(m["role"], m["content"]) for m in messages)
    if continue_text is not None:
        return text + GENERATION_PROMPT + continue_text
    return text + GENERATION_PROMPT if add_generation_prompt else text


def stop_token_ids(tokenizer: Tokenizer) -> set[int]:
    """Token ids that end a reply: <|eos|> and <|separator|> (the end of an assistant turn)."""
    return {tokenizer.eos_id, tokenizer.separator_id}
