"""The Responses event stream: OpenAI's event types, each with its ``sequence_number``, plus
our run's progress as ``rsa.progress`` events (a type of their own, which OpenAI's Python and
JS SDKs pass through to the caller unchanged).

:class:`EventSequence` numbers the events of one response from 0. :class:`TextItems` turns the
model's text, as it arrives, into the output items' events: a reasoning item while a leading
``<think>`` block lasts, then the message item, so that the deltas add up to exactly the items
of the final response object (see :func:`~mrsa.service.responses.wire.split_reasoning`).
"""

from __future__ import annotations

from typing import Any

from mrsa.service.responses.wire import (
    THINK_CLOSE,
    THINK_OPEN,
    OutputMessage,
    OutputText,
    ReasoningItem,
    ResponseObject,
    SummaryText,
    item_ids,
    split_reasoning,
)

PROGRESS = "rsa.progress"


def _partial_split(text: str) -> tuple[str | None, str]:
    """What of :func:`split_reasoning`'s answer is already certain while ``text`` may still
    grow: nothing while it could yet open a ``<think>``, no half-arrived closing tag."""
    stripped = text.lstrip()
    if THINK_OPEN.startswith(stripped):
        return None, ""
    reasoning, message = split_reasoning(text)
    if reasoning is not None and not message and THINK_CLOSE not in stripped:
        for cut in range(min(len(THINK_CLOSE) - 1, len(reasoning)), 0, -1):
            if THINK_CLOSE.startswith(reasoning[-cut:]):
                return reasoning[:-cut], ""
    return reasoning, message


class EventSequence:
    """Numbers the events of one response (``sequence_number`` from 0)."""

    def __init__(self) -> None:
        self.next = 0

    def event(self, type: str, **fields: Any) -> dict[str, Any]:
        event = {"type": type, "sequence_number": self.next, **fields}
        self.next += 1
        return event

    def lifecycle(self, type: str, response: ResponseObject) -> dict[str, Any]:
        return self.event(type, response=response.model_dump())

    def progress(self, rsa: dict[str, Any]) -> dict[str, Any]:
        return self.event(PROGRESS, rsa=rsa)


class TextItems:
    """The output items of one response, built from its text as it streams."""

    def __init__(self, resp_id: str, seq: EventSequence) -> None:
        self.seq = seq
        self.rs_id, self.msg_id = item_ids(resp_id)
        self.text = ""
        self._reasoning: str | None = None  # emitted so far (None: no reasoning item opened)
        self._message: str | None = None
        self._reasoning_done = False
        self._index = 0

    def feed(self, delta: str) -> list[dict[str, Any]]:
        self.text += delta
        return self._emit(*_partial_split(self.text), final=False)

    def finish(self, status: str) -> list[dict[str, Any]]:
        """The remaining deltas and the items' ``done`` events (``status`` of the message)."""
        reasoning, message = split_reasoning(self.text)
        return self._emit(reasoning, message, final=True, status=status)

    def _emit(self, reasoning: str | None, message: str, *, final: bool, status: str = "completed"
              ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if reasoning is not None and not self._reasoning_done:
            if self._reasoning is None:
                self._reasoning = ""
                out += self._open_reasoning()
            if len(reasoning) > len(self._reasoning):
                out.append(self.seq.event(
                    "response.reasoning_summary_text.delta", item_id=self.rs_id, output_index=self._index,
                    summary_index=0, delta=reasoning[len(self._reasoning):],
                ))
                self._reasoning = reasoning
            if message or final:
                out += self._close_reasoning()
        if message or final:
            if self._message is None:
                self._message = ""
                out += self._open_message()
            if len(message) > len(self._message):
                out.append(self.seq.event(
                    "response.output_text.delta", item_id=self.msg_id, output_index=self._index,
                    content_index=0, delta=message[len(self._message):], logprobs=[],
                ))
                self._message = message
        if final:
            out += self._close_message(status)
        return out

    def _open_reasoning(self) -> list[dict[str, Any]]:
        item = ReasoningItem(id=self.rs_id, status="in_progress", summary=[])
        return [
            self.seq.event("response.output_item.added", output_index=self._index, item=item.model_dump()),
            self.seq.event("response.reasoning_summary_part.added", item_id=self.rs_id, output_index=self._index,
                           summary_index=0, part=SummaryText(text="").model_dump()),
        ]

    def _close_reasoning(self) -> list[dict[str, Any]]:
        self._reasoning_done = True
        text = self._reasoning or ""
        part = SummaryText(text=text).model_dump()
        item = ReasoningItem(id=self.rs_id, summary=[SummaryText(text=text)])
        out = [
            self.seq.event("response.reasoning_summary_text.done", item_id=self.rs_id, output_index=self._index,
                           summary_index=0, text=text),
            self.seq.event("response.reasoning_summary_part.done", item_id=self.rs_id, output_index=self._index,
                           summary_index=0, part=part),
            self.seq.event("response.output_item.done", output_index=self._index, item=item.model_dump()),
        ]
        self._index += 1
        return out

    def _open_message(self) -> list[dict[str, Any]]:
        item = OutputMessage(id=self.msg_id, status="in_progress", content=[])
        return [
            self.seq.event("response.output_item.added", output_index=self._index, item=item.model_dump()),
            self.seq.event("response.content_part.added", item_id=self.msg_id, output_index=self._index,
                           content_index=0, part=OutputText(text="").model_dump()),
        ]

    def _close_message(self, status: str) -> list[dict[str, Any]]:
        text = self._message or ""
        part = OutputText(text=text)
        item = OutputMessage(id=self.msg_id, status=status, content=[part])  # type: ignore[arg-type]
        return [
            self.seq.event("response.output_text.done", item_id=self.msg_id, output_index=self._index,
                           content_index=0, text=text, logprobs=[]),
            self.seq.event("response.content_part.done", item_id=self.msg_id, output_index=self._index,
                           content_index=0, part=part.model_dump()),
            self.seq.event("response.output_item.done", output_index=self._index, item=item.model_dump()),
        ]


def final_events(response: ResponseObject, text: str | None, seq: EventSequence) -> list[dict[str, Any]]:
    """The events that end a response whose text is known at once (a background run's
    answer, a stored response replayed): its items, then its terminal lifecycle event."""
    out: list[dict[str, Any]] = []
    if text is not None:
        items = TextItems(response.id, seq)
        out += items.feed(text)
        out += items.finish("incomplete" if response.status == "incomplete" else "completed")
    kind = {"completed": "response.completed", "incomplete": "response.incomplete",
            "failed": "response.failed", "cancelled": "response.cancelled"}[response.status]
    out.append(seq.lifecycle(kind, response))
    return out
