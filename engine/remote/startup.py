"""Start-up checks: what the replicas serve, and whether it is the model loaded here.

Tails are sliced from local token ids and sent back as ids, so a replica whose tokenizer
disagrees would silently corrupt every aggregation prompt: the engine refuses to start (or,
for a replica that was down at start, to admit it) unless the replica's ``/tokenize`` gives
the local ids on a few awkward strings, and its ``/v1/models`` reports a context length.
Blocking (``httpx.Client``): it runs before serving, and from a thread for a late replica.
"""

from __future__ import annotations

import logging

import httpx

from mrsa.engine.base import Tokenizer
from mrsa.engine.remote.errors import UpstreamMismatch, UpstreamUnavailable
from mrsa.engine.remote.replicas import Replica, ReplicaPool

log = logging.getLogger(__name__)

# Strings whose ids must match between the local tokenizer and every replica's.
PROBE_STRINGS = (
    "What is 7 + 5? Put the answer in \\boxed{}.",
    "  leading spaces,\ttabs\nand newlines\n\n",
    "Unicode: café naïve — 日本語 😀 ∑x²",
    "<think>reasoning</think> 12345678901234567890",
)


def _model_card(client: httpx.Client, r: Replica) -> dict:
    """The replica's (first) model card from ``/v1/models``."""
    return client.get(f"{r.url}/v1/models").raise_for_status().json()["data"][0]


def _adopt(r: Replica, card: dict) -> None:
    """Record the id the replica serves under and its context length (0: not reported)."""
    r.served_id = card["id"]
    r.max_model_len = int(card.get("max_model_len") or 0)


def discover(pool: ReplicaPool, model: str | None, timeout: httpx.Timeout) -> str:
    """Read every reachable replica's /v1/models; the local model path to load.

    ``model`` (the user's) wins; without it, the checkpoint the replicas were started with,
    which must then be the same on all of them.
    """
    roots: list[str] = []
    with httpx.Client(timeout=timeout) as client:
        for r in pool:
            try:
                card = _model_card(client, r)
            except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
                log.warning("upstream %s unreachable at start (%s); admitted once healthy", r.url, exc)
                continue
            _adopt(r, card)
            roots.append(card.get("root") or card["id"])
    if not roots:
        raise UpstreamUnavailable(
            f"none of the upstreams answers /v1/models: {', '.join(r.url for r in pool)}"
        )
    if model:
        return model
    if len(set(roots)) > 1:
        raise UpstreamMismatch(f"upstreams serve different models ({sorted(set(roots))}); pass --model")
    return roots[0]


def verify_reachable(pool: ReplicaPool, tokenizer: Tokenizer, timeout: httpx.Timeout) -> None:
    """Check every replica that answered :func:`discover` and admit it; raise on a mismatch."""
    with httpx.Client(timeout=timeout) as client:
        for r in pool:
            if r.served_id:
                verify(client, r, tokenizer)  # raises on a mismatch: refuse to start
                r.healthy = True


def verify(client: httpx.Client, r: Replica, tokenizer: Tokenizer) -> None:
    """The replica tokenizes like the local tokenizer and has a usable context length."""
    if r.max_model_len <= 0:
        raise UpstreamMismatch(f"upstream {r.url} does not report max_model_len in /v1/models")
    for text in PROBE_STRINGS:
        resp = client.post(
            f"{r.url}/tokenize",
            json={"model": r.served_id, "prompt": text, "add_special_tokens": False},
        )
        if resp.status_code != 200:
            raise UpstreamMismatch(
                f"upstream {r.url} cannot tokenize ({resp.status_code}: {resp.text[:200]}); "
                "the remote engine needs vLLM's /tokenize endpoint"
            )
        remote = resp.json().get("tokens")
        local = tokenizer.encode(text)
        if remote != local:
            raise UpstreamMismatch(
                f"tokenizer mismatch with upstream {r.url} (model {r.served_id!r}) on {text!r}: "
                f"local {local[:12]}... vs remote {(remote or [])[:12]}...; --model must be the "
                "checkpoint the upstreams serve"
            )
    r.verified = True


def admit_late(r: Replica, tokenizer: Tokenizer, min_model_len: int, timeout: httpx.Timeout) -> None:
    """A replica that was down at start: check it like the others (the caller admits it).

    It must also hold the context length the engine already promised (``min_model_len``).
    """
    with httpx.Client(timeout=timeout) as client:
        _adopt(r, _model_card(client, r))
        verify(client, r, tokenizer)
    if r.max_model_len < min_model_len:
        raise UpstreamMismatch(
            f"upstream {r.url} has max_model_len {r.max_model_len} < {min_model_len}"
        )
