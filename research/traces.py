"""Reading one kept run (a configuration's problem in ``mrsa eval --keep-traces``) by round."""

from __future__ import annotations


def round_traces(nodes: list[dict], round_: int) -> list[dict]:
    """One kept run's trace calls of round ``round_`` (0 is the first), in index order."""
    return sorted((n for n in nodes if n["round"] == round_ and n["kind"] == "trace"), key=lambda n: n["index"])
