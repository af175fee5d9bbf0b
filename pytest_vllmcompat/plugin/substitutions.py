"""Pieces a lane cannot run and replaces (pytest_vllmcompat.testing.lane_substitutes): said loudly, per test.

A test declares what it replaced with the `vllm_lane_substitute` fixture. The declaration goes into the test's
report (a "vllmcompat" section and the terminal summary) and into the cell's results (`substituted` per test and
`substitutions` per cell), so a green cell never silently stands for a path it did not exercise.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

PROPERTY = "vllmcompat_substituted"


def declarer(item: pytest.Item) -> Callable[[str], None]:
    def declare(what: str) -> None:
        if (PROPERTY, what) not in item.user_properties:
            item.user_properties.append((PROPERTY, what))
            item.add_report_section("call", "vllmcompat", f"substituted on this lane: {what}")

    return declare
