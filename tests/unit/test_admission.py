"""Admission control: M runs execute, Q wait, the rest get 429 with Retry-After in the OpenAI
envelope; a place is never leaked by a client that goes away."""

from __future__ import annotations

import asyncio

import pytest

from mrsa.service.admission import Admission, Overloaded
from tests.fakes import FakeEngine
from tests.serving import QUESTION, RSA, serving, submit, wait_status


async def test_slots_then_queue_then_refusal() -> None:
    admission = Admission("runs", running=2, queued=1, retry_after_s=7)
    a, b = admission.admit(), admission.admit()
    assert a.running and b.running
    c = admission.admit()
    assert not c.running and admission.queued == 1
    with pytest.raises(Overloaded) as refused:
        admission.admit()
    assert refused.value.retry_after_s == 7
    waiter = asyncio.create_task(c.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    a.release()
    await waiter
    assert c.running and admission.running == 2 and admission.queued == 0
    a.release()  # idempotent
    assert admission.running == 2
    b.release(), c.release()
    assert admission.running == 0


async def test_waiters_are_served_in_arrival_order_and_cancelled_ones_leave() -> None:
    admission = Admission("runs", running=1, queued=3)
    holder = admission.admit()
    tickets = [admission.admit() for _ in range(3)]
    order: list[int] = []

    async def wait(i: int) -> None:
        await tickets[i].wait()
        order.append(i)
        tickets[i].release()

    tasks = [asyncio.create_task(wait(i)) for i in range(3)]
    await asyncio.sleep(0)
    tasks[1].cancel()  # a client that went away while queued
    await asyncio.sleep(0)
    tickets[1].release()
    assert admission.queued == 2
    holder.release()
    await asyncio.gather(tasks[0], tasks[2])
    assert order == [0, 2] and admission.running == 0 and admission.queued == 0


async def test_forced_admission_ignores_the_queue_bound() -> None:
    admission = Admission("runs", running=1, queued=0)
    holder = admission.admit()
    with pytest.raises(Overloaded):
        admission.admit()
    assert not admission.admit(force=True).running  # a run accepted before a restart
    holder.release()


async def test_a_stream_gives_its_place_back_however_it_ends() -> None:
    """A streamed response holds its ticket and releases it in a ``finally`` when it ends:
    finished, or the client gone before the first byte. Never by garbage collection."""
    import gc

    from mrsa.service.streaming import EventStream, sse

    admission = Admission("requests", running=1, queued=0)
    dropped = admission.admit()
    del dropped
    gc.collect()
    assert admission.running == 1  # nobody released it: the holder must, in a finally

    admission = Admission("requests", running=1, queued=0)

    async def lines():
        yield sse("1")

    async def disconnected() -> dict:
        return {"type": "http.disconnect"}

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    for receive in (disconnected, None):
        ticket = admission.admit()
        assert admission.running == 1
        stream = EventStream(lines(), ticket)

        async def never() -> dict:
            await asyncio.Event().wait()  # the client stays until the body is done
            return {}

        await stream({"type": "http", "method": "GET", "asgi": {"spec_version": "2.4"}}, receive or never, send)
        assert ticket.released and admission.running == 0


async def test_runs_beyond_running_and_queued_get_429() -> None:
    engine = FakeEngine(delay=0.02)
    async with serving(engine, admission={"max_running_runs": 1, "max_queued_runs": 1, "retry_after_s": 3}) as http:
        first, second = await submit(http), await submit(http)
        r = await http.post("/v1/rsa/runs", json={"model": "fake-model", "messages": QUESTION, "rsa": RSA})
        assert r.status_code == 429 and r.headers["retry-after"] == "3"
        assert r.json()["error"]["code"] == "server_busy" and r.json()["error"]["message"]
        sync = await http.post("/v1/chat/completions", json={"model": "fake-model", "messages": QUESTION, "rsa": RSA})
        assert sync.status_code == 429  # direct runs share the same slots
        assert (await http.get(f"/v1/rsa/runs/{second['id']}")).json()["status"] == "queued"
        assert engine.max_in_flight <= 4  # one run's population at a time
        await wait_status(http, second["id"], {"completed"})
        assert (await http.get(f"/v1/rsa/runs/{first['id']}")).json()["status"] == "completed"
        again = await submit(http)  # slots came back
        await wait_status(http, again["id"], {"completed"})


async def test_plain_requests_beyond_the_limit_get_429() -> None:
    engine = FakeEngine(delay=0.02)
    limits = {"max_running_requests": 2, "max_queued_requests": 1}
    async with serving(engine, admission=limits) as http:
        body = {"model": "fake-model", "messages": QUESTION, "max_tokens": 20}
        responses = await asyncio.gather(*(http.post("/v1/chat/completions", json=body) for _ in range(6)))
        codes = sorted(r.status_code for r in responses)
        assert codes == [200, 200, 200, 429, 429, 429]
        assert engine.max_in_flight <= 2
        assert all(r.json()["error"]["type"] == "rate_limit_error" for r in responses if r.status_code == 429)
        assert (await http.post("/v1/chat/completions", json=body)).status_code == 200
