"""What a test records about itself beyond its outcome, carried to the results in its reports' user_properties.

Substitutions: pieces this lane cannot run and replaced (pytest_vllmcompat.testing.lane_substitutes), declared
with the `vllm_lane_substitute` fixture. They go into the test's report (a "vllmcompat" section and the terminal
summary) and the cell's results (`substituted` per test, `substitutions` per cell), so a green cell never
silently stands for a path it did not exercise.

Measurements: numbers a tolerance is derived from (e.g. the worst logprob difference against the reference),
recorded with the `vllm_measure` fixture as `measured` {name: value} per test, so the noise can be read back
across every cell's results instead of from one cell's stdout.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

SUBSTITUTED = "vllmcompat_substituted"
MEASURED = "vllmcompat_measured"


def substitution_declarer(item: pytest.Item) -> Callable[[str], None]:
    def declare(what: str) -> None:
        if (SUBSTITUTED, what) not in item.user_properties:
            item.user_properties.append((SUBSTITUTED, what))
            item.add_report_section("call", "vllmcompat", f"substituted on this lane: {what}")

    return declare


def measurer(item: pytest.Item) -> Callable[[str, float], None]:
    def measure(name: str, value: float) -> None:
        item.user_properties.append((MEASURED, (name, float(value))))

    return measure
