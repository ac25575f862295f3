"""How a run turns its last population into one answer.

The pool is the deepest round with enough finished traces to aggregate (``min(K, N)``), or
failing that the deepest round with any. ``majority`` returns the full text of a pool member
holding the most common answer (no engine call); ``aggregate`` asks the model once more over K
members of the pool; ``auto`` votes when at least two answers could be extracted (a vote of one
says nothing), else aggregates. An empty pool (deadline before any trace finished) is answered
directly from the plain prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

from mrsa.rsa.answers import majority_vote, normalize_answer
from mrsa.rsa.events import FinalMode
from mrsa.rsa.node import Node
from mrsa.rsa.params import Selection


def final_pool(rounds: Sequence[Sequence[Node]], k: int) -> list[Node]:
    """Finished nodes of the deepest round that has ``min(k, N)`` of them (else any), by index."""
    fallback: list[Node] = []
    for nodes in reversed(rounds):
        done = [n for n in nodes if n.finished]
        if done and len(done) >= min(k, len(nodes)):
            return done
        if done and not fallback:
            fallback = done
    return fallback


def final_mode(selection: Selection, pool: Sequence[Node]) -> FinalMode:
    if not pool:
        return "direct"
    if selection == "auto":
        extracted = sum(n.answer is not None for n in pool)
        return "majority" if extracted >= 2 else "aggregate"
    return selection


def majority_pick(pool: Sequence[Node]) -> Node:
    """The first pool member (by index) whose answer wins the vote; the first member when no
    answer could be extracted."""
    winner, _ = majority_vote(n.answer for n in pool)
    for node in pool:
        if winner is not None and node.answer is not None and normalize_answer(node.answer) == winner:
            return node
    return pool[0]
