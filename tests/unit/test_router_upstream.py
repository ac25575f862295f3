"""One upstream that is a router in front of many engines: a trace that failed on it (an engine
behind it died mid-stream) is retried on it, even once it was ejected, since the router sends
the retry to another engine. With several upstreams the trace still avoids the ones it failed
on, and fails when none is left."""

from __future__ import annotations

import pytest

from mrsa.engine.remote.errors import UpstreamUnavailable
from mrsa.engine.remote.replicas import ReplicaPool


def _pool(*urls: str) -> ReplicaPool:
    pool = ReplicaPool(urls)
    for r in pool:
        r.verified = r.healthy = True
    return pool


def test_a_lone_upstream_takes_the_retry_of_a_trace_that_failed_on_it() -> None:
    pool = _pool("http://router:8000")
    (router,) = pool
    assert pool.pick(avoid={router}) is router
    router.record_failure(eject_after=1)  # ejected: the breaks were the engines', not its own
    assert not router.healthy
    assert pool.pick(avoid={router}) is router


def test_several_upstreams_are_avoided_once_a_trace_failed_on_them() -> None:
    pool = _pool("http://a:8000", "http://b:8000")
    a, b = pool
    a.record_failure(eject_after=1)
    assert pool.pick(avoid={a}) is b
    b.record_failure(eject_after=1)
    with pytest.raises(UpstreamUnavailable):
        pool.pick(avoid={a, b})
