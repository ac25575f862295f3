"""Stored responses: the object of one (kept whole once delivered, or read from its background
run), and its event stream replayed from the run's durable event log.

A background response *is* a durable run (the run's id is the response's id), so it is
checkpointed, resumed after a restart and cancelled as runs are. Its Responses events are a
pure function of the run's event log (each logged event gives a fixed list of Responses
events; a completed run's answer is fixed once logged), so their ``sequence_number`` is the
same on every replay, also after a restart: ``starting_after=N`` gives exactly the events
after N.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from mrsa.service.responses.events import EventSequence, final_events
from mrsa.service.responses.wire import ResponseObject, join_reasoning, response_object, split_reasoning
from mrsa.service.runs import RunManager, StoredRun
from mrsa.service.wire import ChatCompletion

RUN_STATUS = {"queued": "queued", "running": "in_progress", "completed": "completed", "failed": "failed",
              "cancelled": "cancelled"}


def answer_of(completion: ChatCompletion, plain: bool) -> tuple[str, str]:
    """``(text, status)`` of a run's completion: ``incomplete`` when the answer was cut at its
    token limit (a plain run's only trace tells; majority answers always say ``stop``)."""
    reason = completion.choices[0].finish_reason
    if plain and completion.rsa is not None and completion.rsa.trace:
        reason = completion.rsa.trace[0].get("finish_reason", reason)
    message = completion.choices[0].message
    return join_reasoning(message.reasoning, message.content), "incomplete" if reason == "length" else "completed"


def summary_of(completion: ChatCompletion) -> dict[str, Any] | None:
    """The run summary a response object carries as ``rsa`` (which method ran, why it stopped)."""
    return None if completion.rsa is None else completion.rsa.model_dump(exclude={"trace"})


def record(prep_model: str, created_at: int, echo: dict[str, Any], conversation: list[dict[str, str]],
           response: ResponseObject | None) -> dict[str, Any]:
    """What the store keeps of a response (``response`` None: read it from its run)."""
    return {"model": prep_model, "created_at": created_at, "echo": echo, "conversation": conversation,
            "response": None if response is None else response.model_dump()}


async def background_object(runs: RunManager, stored: StoredRun, data: dict[str, Any],
                            status: str | None = None) -> ResponseObject:
    """The response of a background run as it stands (or, with ``status``, as it stood)."""
    run = await runs.run_object(stored)
    text, summary = None, None
    shown = status or RUN_STATUS[stored.status]
    if status is None and run.result is not None:
        text, shown = answer_of(run.result, plain=not data["echo"].get("rsa"))
        summary = summary_of(run.result) if data["echo"].get("rsa") else None
    terminal = shown in ("completed", "incomplete", "failed", "cancelled")
    return response_object(
        stored.id, data["created_at"], data["model"], data["echo"], shown, text=text,
        usage=run.usage if terminal else None, error=run.error, completed_at=int(stored.updated) if terminal else None,
        rsa=summary,
    )


async def load(runs: RunManager, owner: str, resp_id: str) -> tuple[ResponseObject, dict[str, Any]] | None:
    """A stored response of ``owner`` as it stands now, with its record; None if there is none
    (never stored, deleted, expired, or another key's)."""
    found = await runs.get_response(owner, resp_id)
    if found is None:
        return None
    run_id, data = found
    if run_id is None:
        return ResponseObject(**data["response"]), data
    stored = await runs.get(owner, run_id)
    if stored is None:
        return None
    return await background_object(runs, stored, data), data


def continuation(response: ResponseObject, data: dict[str, Any]) -> list[dict[str, str]] | None:
    """The conversation a response continues into (None until it has an answer)."""
    if response.status not in ("completed", "incomplete"):
        return None
    text = "".join(part.text for item in response.output if item.type == "message" for part in item.content)
    return [*data["conversation"], {"role": "assistant", "content": split_reasoning(text)[1]}]


async def replay(runs: RunManager, owner: str, resp_id: str, data: dict[str, Any], after: int,
                 heartbeat_s: float = 15.0) -> AsyncIterator[dict[str, Any] | None]:
    """The Responses events of a background response with ``sequence_number > after``, live
    until the run ends; ``None`` as a heartbeat."""
    seq = EventSequence()
    rsa = bool(data["echo"].get("rsa"))
    async with aclosing(runs.events(owner, resp_id, 0, heartbeat_s)) as logged:
        async for item in logged:
            if item is None:
                yield None
                continue
            _, event = item
            for out in await _translate(runs, owner, resp_id, data, event, seq, rsa):
                if out["sequence_number"] > after:
                    yield out


async def _translate(runs: RunManager, owner: str, resp_id: str, data: dict[str, Any], event: dict[str, Any],
                     seq: EventSequence, rsa: bool) -> list[dict[str, Any]]:
    kind = event.get("event")

    def progress() -> list[dict[str, Any]]:  # numbered where it is placed
        return [seq.progress(event)] if rsa else []

    if kind == "run_started":
        queued = response_object(resp_id, data["created_at"], data["model"], data["echo"], "queued")
        return [seq.lifecycle("response.created", queued), *progress()]
    if kind == "run_running":
        running = response_object(resp_id, data["created_at"], data["model"], data["echo"], "in_progress")
        return [seq.lifecycle("response.in_progress", running)]
    if kind in ("run_completed", "run_failed", "run_cancelled"):
        stored = await runs.get(owner, resp_id)
        if stored is None:  # deleted while followed
            return progress()
        logged = progress()
        response = await background_object(runs, stored, data)
        text = None
        if response.status in ("completed", "incomplete"):
            assert stored.result is not None
            text = ChatCompletion(**stored.result).choices[0].message.content
        return [*logged, *final_events(response, text, seq)]
    return progress()


def synthesized(response: ResponseObject, after: int) -> list[dict[str, Any]]:
    """The events of a stored response that was not a background one: its whole life at once."""
    seq = EventSequence()
    created = response.model_copy(update={"status": "in_progress", "output": [], "usage": None,
                                          "completed_at": None, "error": None, "incomplete_details": None})
    events = [seq.lifecycle("response.created", created), seq.lifecycle("response.in_progress", created)]
    text = "".join(
        (f"<think>{item.summary[0].text if item.summary else ''}</think>" if item.type == "reasoning" else
         "".join(p.text for p in item.content))
        for item in response.output
    )
    events += final_events(response, text if response.output else None, seq)
    return [e for e in events if e["sequence_number"] > after]
