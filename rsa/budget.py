"""The token budget of a run: every generated token counts, and the total is never exceeded.

A call may generate up to its ``max_tokens``, so a call is *committed* its ``max_tokens`` when it
launches and *settled* (commitment released, actual tokens charged) when it ends. Launching only
what fits ``total - generated - committed - reserve`` therefore makes overshoot impossible, even
with many calls in flight. The reserve keeps room for the final answer.
"""

from __future__ import annotations


class TokenBudget:
    """Commitments against an optional total. ``total=None`` means unlimited."""

    def __init__(self, total: int | None, reserve: int = 0) -> None:
        self.total = total
        self.reserve = reserve
        self.generated = 0  # tokens of calls that ended
        self.committed = 0  # max_tokens of calls in flight

    def grant(self, want: int, minimum: int) -> int | None:
        """Commit up to ``want`` tokens for a trace, keeping the reserve. ``None`` (nothing
        committed) when fewer than ``minimum`` tokens are available: a trace too short to fill
        a tail is not worth its prompt."""
        granted = want
        if self.total is not None:
            granted = min(want, self.total - self.generated - self.committed - self.reserve)
        if granted < max(minimum, 1):
            return None
        self.committed += granted
        return granted

    def grant_final(self, want: int) -> int:
        """Commit up to ``want`` tokens for the final call; the reserve is its to use.
        May be 0 when a run without a reserve spent everything."""
        granted = want
        if self.total is not None:
            granted = max(0, min(want, self.total - self.generated - self.committed))
        self.committed += granted
        return granted

    def settle(self, granted: int, used: int) -> None:
        """A call ended after generating ``used`` of its ``granted`` tokens."""
        self.committed -= granted
        self.generated += used
