"""Server-sent events in the OpenAI chunk format.

RSA progress rides in chunks with ``choices: []`` and an extra ``rsa`` field, the same shape as
the usage chunk, so every OpenAI SDK's stream parser accepts them and ignores what it does not
know. Then come the final answer's content deltas, the finish chunk, usage if asked, ``[DONE]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mrsa.service.errors import APIError


@dataclass(frozen=True)
class ChunkFactory:
    """Builds the chunks of one response (same id, created and model on all of them)."""

    id: str
    created: int
    model: str

    def _chunk(self, choices: list[dict], **extra: Any) -> dict:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }

    def role(self, index: int = 0) -> dict:
        return self._chunk(
            [{"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
        )

    def content(self, text: str, index: int = 0) -> dict:
        return self._chunk([{"index": index, "delta": {"content": text}, "finish_reason": None}])

    def finish(self, reason: str, index: int = 0, **extra: Any) -> dict:
        return self._chunk([{"index": index, "delta": {}, "finish_reason": reason}], **extra)

    def progress(self, event: dict) -> dict:
        return self._chunk([], rsa=event)

    def usage(self, usage: dict) -> dict:
        return self._chunk([], usage=usage)


def sse(data: dict | str) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n"


def sse_error(err: APIError) -> str:
    return sse(err.body())


DONE = sse("[DONE]")
