"""vLLM's reasoning parsers (``--reasoning-parser NAME``) behind :class:`engine.base.ReasoningParser`.

RSA runs generate through the engine's token interface, so vLLM's OpenAI layer never sees their
output: this adapter runs the very parser class that layer would (``ParserManager``, no tool
parser), with the same calls (``parse`` on a whole output, ``parse_delta`` per streamed delta,
``count_reasoning_tokens``), so an RSA answer is split exactly as ``vllm serve`` splits a plain one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from mrsa.engine.tokenizer import HFTokenizer


def reasoning_parsers(name: str | None, tokenizer: HFTokenizer) -> Callable[[Sequence[int]], VllmReasoningParser | None]:
    """An engine's ``reasoning_parser``: one fresh parser per generation (vLLM's parsers are
    stateful), given its prompt ids; always None without a parser ``name``. An unknown name, or
    a parser that cannot work with the checkpoint's tokenizer, raises here, at start-up."""
    if not name:
        return lambda prompt_ids: None
    return _vllm_parsers(name, tokenizer.hf)


def _vllm_parsers(name: str, tokenizer: Any) -> Callable[[Sequence[int]], VllmReasoningParser]:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.parser import ParserManager

    parser_cls = ParserManager.get_parser(tool_parser_name=None, reasoning_parser_name=name)  # unknown: raises
    parser_cls(tokenizer)  # a parser that cannot work with this tokenizer fails now, not per request
    # parse()/parse_delta() take the request for per-request switches (tools, thinking kwargs);
    # an RSA call has none of those.
    request = ChatCompletionRequest(model="rsa", messages=[{"role": "user", "content": ""}])

    def make(prompt_ids: Sequence[int]) -> VllmReasoningParser:
        return VllmReasoningParser(lambda: parser_cls(tokenizer), request, prompt_ids)

    return make


class VllmReasoningParser:
    """One generation's split into reasoning and content. As in vLLM's server, the streamed
    deltas and the whole output are parsed by separate parser instances."""

    def __init__(self, new_parser: Callable[[], Any], request: Any, prompt_ids: Sequence[int]) -> None:
        self._new = new_parser
        self._stream: Any = None
        self._request = request
        self._prompt_ids = list(prompt_ids)

    def _parser(self) -> Any:
        parser = self._new()
        parser.set_prompt_token_ids(self._prompt_ids)
        return parser

    def split(self, text: str, token_ids: Sequence[int]) -> tuple[str | None, str | None]:
        reasoning, content, _ = self._parser().parse(text, self._request, model_output_token_ids=list(token_ids))
        return reasoning, content

    def delta(self, text: str, token_ids: Sequence[int], *, finished: bool) -> tuple[str, str]:
        if self._stream is None:
            self._stream = self._parser()
        message = self._stream.parse_delta(
            delta_text=text, delta_token_ids=list(token_ids), request=self._request,
            prompt_token_ids=self._prompt_ids, finished=finished,
        )
        if message is None:  # the parser holds the text back (a marker may be arriving)
            return "", ""
        return message.reasoning or "", message.content or ""

    def reasoning_tokens(self, token_ids: Sequence[int]) -> int:
        return self._parser().count_reasoning_tokens(list(token_ids))
