"""Research scripts over kept evaluation traces: questions the measurements raised, answered
from a checkout (``python -m research.projection``, ``python -m research.aggregation_probe``).
Not part of the installed package: they read ``mrsa eval --keep-traces`` files and the library,
and nothing in ``mrsa`` imports them."""
