"""Markovian RSA: recursive self-aggregation over bounded tails, against any engine.

Pure and deterministic given a seed; imports nothing but the engine protocol
(:mod:`mrsa.engine.base`), so it runs against a fake engine in milliseconds. Installed as
``mrsa.rsa``; not PyPI's ``rsa`` (tests/packaging/test_names.py).
"""

if __name__ == "rsa":  # this folder, found under the bare name from a checkout's root
    from mrsa import step_aside

    step_aside(__name__, __file__)


from mrsa.rsa.answers import extract_answer, majority_vote, normalize_answer
from mrsa.rsa.events import (
    FinalDelta,
    FinalMode,
    FinalStarted,
    NodeFinished,
    NodeRecord,
    NodeStarted,
    NodeStatus,
    ProgressEvent,
    RoundCompleted,
    RsaEvent,
    RsaResult,
    RunCompleted,
    RunStarted,
    StopReason,
    Usage,
)
from mrsa.rsa.params import RsaLimits, RsaParamError, RsaParams
from mrsa.rsa.plan import Plan
from mrsa.rsa.prompts import ContextNeeds, ContextTooLongError, NoUserMessageError, check_context
from mrsa.rsa.run import RsaRun
from mrsa.rsa.tails import Tail, take_tail

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
    "ProgressEvent",
    "RoundCompleted",
    "RsaEvent",
    "RsaLimits",
    "RsaParamError",
    "RsaParams",
    "RsaResult",
    "RsaRun",
    "RunCompleted",
    "RunStarted",
    "StopReason",
    "Tail",
    "Usage",
    "check_context",
    "extract_answer",
    "majority_vote",
    "normalize_answer",
    "take_tail",
]
