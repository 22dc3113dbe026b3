"""Grok-2's chat prompt format and its stop conditions (docs/grok2.md#chat-template,
docs/grok2.md#stop-rules).

The template is the one SGLang, vLLM and llama.cpp ship for Grok-2: plain-text turns, each
closed by the special token `<|separator|>` and a blank line, no BOS. `encode_chat` builds the
token ids piece by piece: the template's separators are the special token, while everything a
person or a file supplied (message content, system prompts, imported history, API messages) is
encoded as literal text, so typing `<|separator|>` cannot end a turn or forge one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
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


_PREFIX = {"user": "Human: ", "system": "System: ", "assistant": "Assistant: "}


def chat_pieces(
    messages: Iterable[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    continue_text: str | None = None,
) -> Iterator[tuple[str, bool]]:
    """The prompt as (text, is_separator) pieces: text pieces are literal, and each True piece
    is the template's `<|separator|>` special token. Joining the texts gives `render_chat`.

    User and system content is stripped; assistant content is not, exactly as the reference
    template does. Roles outside Grok-2's format (tool, ...) are left out. continue_text
    resumes an interrupted assistant reply: the prompt ends with "Assistant:" followed by that
    text verbatim, with no separator, so the model carries on mid-reply as if it had never
    stopped (pass exactly what the model produced after "Assistant:", leading space included);
    it implies the generation prompt.
    """
    for message in messages:
        role, content = message["role"], message["content"]
        if role not in _PREFIX:
            continue
        yield _PREFIX[role] + (content if role == "assistant" else content.strip()), False
        yield SEPARATOR, True
        yield "\n\n", False
    if continue_text is not None:
        yield GENERATION_PROMPT + continue_text, False
    elif add_generation_prompt:
        yield GENERATION_PROMPT, False


def render_chat(
    messages: Iterable[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    continue_text: str | None = None,
) -> str:
    """The prompt text for messages ({"role", "content"} mappings), in order (see
    `chat_pieces`). For showing or sending as text; a local engine encodes with `encode_chat`."""
    return "".join(text for text, _ in chat_pieces(
        messages, add_generation_prompt=add_generation_prompt, continue_text=continue_text))


def encode_chat(
    tokenizer: Tokenizer,
    messages: Iterable[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    continue_text: str | None = None,
) -> list[int]:
    """Token ids of the chat prompt: the template's separators as the special token, all
    content as literal text (`Tokenizer.encode_literal`). For content without special-token
    text this equals `tokenizer.encode(render_chat(...))`: the tokenizer splits at special
    tokens before its pre-tokenizer runs, so encoding piece by piece changes nothing else."""
    ids: list[int] = []
    for text, is_separator in chat_pieces(
            messages, add_generation_prompt=add_generation_prompt, continue_text=continue_text):
        ids.extend([tokenizer.separator_id] if is_separator else tokenizer.encode_literal(text))
    return ids


def stop_token_ids(tokenizer: Tokenizer) -> set[int]:
    """Token ids that end a reply: <|eos|> and <|separator|> (the end of an assistant turn)."""
    return {tokenizer.eos_id, tokenizer.separator_id}
