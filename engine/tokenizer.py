"""The checkpoint's own Hugging Face tokenizer behind :class:`engine.base.Tokenizer`.

Shared by the embedded engine and the remote engine: both slice tails from these ids, so the
tokenizer must be the one the model was trained with (the remote engine checks that the
replicas agree with it before serving).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class HFTokenizer:
    """The engine's tokenizer (the checkpoint's own), behind the small engine.base interface."""

    def __init__(self, model: str | Any) -> None:
        """``model``: a checkpoint folder (or id), or a transformers tokenizer already loaded."""
        if isinstance(model, str):
            from transformers import AutoTokenizer  # heavy: only when an engine starts

            model = AutoTokenizer.from_pretrained(model)
        self._tok = model
        self.eos_token_id: int | None = self._tok.eos_token_id

    @property
    def hf(self):  # type: ignore[no-untyped-def]
        """The transformers tokenizer itself (for vLLM's parsers, which take one)."""
        return self._tok

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def apply_chat_template(self, messages: Sequence[dict[str, str]]) -> list[int]:
        # Render to text, then encode: the template already carries any special tokens, and
        # transformers' tokenize=True return type differs between major versions.
        text = self._tok.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=True
        )
        return list(self._tok.encode(text, add_special_tokens=False))
