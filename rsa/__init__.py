"""Markovian RSA: recursive self-aggregation over bounded tails, against any engine.

Pure and deterministic given a seed; imports nothing but the engine protocol
(:mod:`engine.base`), so it runs against a fake engine in milliseconds.
"""

from rsa.answers import extract_answer, majority_vote, normalize_answer
from rsa.events import (
    FinalDelta,
    FinalMode,
    FinalStarted,
    NodeFinished,
    NodeRecord,
    NodeStarted,
    NodeStatus,
    RoundCompleted,
    RsaEvent,
    RsaResult,
    RunCompleted,
    StopReason,
    Usage,
)
from rsa.params import RsaLimits, RsaParamError, RsaParams
from rsa.plan import Plan
from rsa.prompts import ContextNeeds, ContextTooLongError, NoUserMessageError, check_context
from rsa.runner import RsaRun
from rsa.tails import Tail, take_tail

__all__ = [
    "ContextNeeds",
    "ContextTooLongError",
    "FinalDelta",
    "FinalMode",
    "FinalStarted",
    "NodeFinished",
    "NodeRecord",
    "NodeStarted",
    "NoUserMessageError",
    "NodeStatus",
    "Plan",
    "RoundCompleted",
    "RsaEvent",
    "RsaLimits",
    "RsaParamError",
    "RsaParams",
    "RsaResult",
    "RsaRun",
    "RunCompleted",
    "StopReason",
    "Tail",
    "Usage",
    "check_context",
    "extract_answer",
    "majority_vote",
    "normalize_answer",
    "take_tail",
]
