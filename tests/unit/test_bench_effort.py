"""``mrsa bench effort``'s latency figures: nearest-rank percentiles of measured wall times."""

from __future__ import annotations

import pytest

from benchmarks.effort import LEVELS, percentile


@pytest.mark.parametrize(("q", "expected"), [(50, 3.0), (95, 5.0), (20, 1.0), (21, 2.0), (100, 5.0)])
def test_percentile_is_a_measured_value_by_nearest_rank(q: float, expected: float) -> None:
    assert percentile([5.0, 1.0, 4.0, 2.0, 3.0], q) == expected


def test_p50_of_an_even_count_is_the_lower_middle_value() -> None:
    assert percentile([40.0, 10.0, 30.0, 20.0], 50) == 20.0


def test_every_effort_the_server_runs_is_a_level() -> None:
    from mrsa.service.settings import EFFORT_PRESETS

    assert set(EFFORT_PRESETS) | {"none"} <= set(LEVELS)
