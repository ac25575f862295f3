"""Per-key shares of admission: one API key cannot hold every queue place, and a freed slot goes
to a key under its share before one over it; with keys off every caller is one tenant."""

from __future__ import annotations

import asyncio

import pytest

from mrsa.service.admission import Admission, Overloaded
from tests.fakes import FakeEngine
from tests.serving import QUESTION, serving

SMALL = {"population": 2, "k": 2, "rounds": 1, "tail_tokens": 8, "trace_max_tokens": 24, "seed": 3}


async def test_one_owner_holds_at_most_its_share_of_the_queue() -> None:
    admission = Admission("runs", running=2, queued=4, share=0.5)
    a = [admission.admit(owner="a") for _ in range(2)]  # both slots: nobody else wants them
    assert all(t.running for t in a)
    a += [admission.admit(owner="a") for _ in range(2)]  # half the queue
    with pytest.raises(Overloaded):
        admission.admit(owner="a")
    b = [admission.admit(owner="b") for _ in range(2)]  # another key still gets in
    assert admission.queued == 4
    waiters = {id(t): asyncio.create_task(t.wait()) for t in a[2:] + b}
    a[0].release()  # a holds 1 slot = its share; b holds none: b's first waiter goes first
    await waiters[id(b[0])]
    assert b[0].running and not waiters[id(a[2])].done()
    a[1].release()  # a holds 0, b holds 1 = its share: a's first waiter, the oldest under its share
    await waiters[id(a[2])]
    assert a[2].running and not waiters[id(b[1])].done()
    for ticket in a + b:
        ticket.release()
    await asyncio.gather(*waiters.values(), return_exceptions=True)
    assert (admission.running, admission.queued) == (0, 0)


async def test_keys_off_is_one_tenant_with_every_place() -> None:
    admission = Admission("runs", running=1, queued=3, share=0.5)
    tickets = [admission.admit() for _ in range(4)]
    assert admission.queued == 3
    for ticket in tickets:
        ticket.release()


async def test_a_key_that_filled_its_share_gets_429_while_another_gets_in() -> None:
    """Regression: one key could hold every slot and queue place, and every other key got 429."""
    limits = {"max_running_runs": 1, "max_queued_runs": 4, "key_share": 0.5}
    async with serving(FakeEngine(delay=0.05), api_keys="key-a,key-b", admission=limits) as http:
        body = {"model": "fake-model", "messages": QUESTION, "rsa": SMALL}

        def post(key: str):
            return http.post("/v1/rsa/runs", json=body, headers={"Authorization": f"Bearer {key}"})

        a = [await post("key-a") for _ in range(4)]
        assert [r.status_code for r in a] == [202, 202, 202, 429]  # 1 running + 2 of the 4 queue places
        b = await post("key-b")
        assert b.status_code == 202
        for r in (*a[:3], b):
            headers = {"Authorization": f"Bearer {'key-b' if r is b else 'key-a'}"}
            run_id = r.json()["id"]
            for _ in range(4000):
                got = (await http.get(f"/v1/rsa/runs/{run_id}", headers=headers)).json()
                if got["status"] == "completed":
                    break
                await asyncio.sleep(0.005)
            assert got["status"] == "completed"
