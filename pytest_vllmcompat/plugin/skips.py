"""What kind of skip a skipped test is, so the gate colours honestly:

  lane            a GPU-only test on a lane without GPUs (the CPU lane can never run it; the CUDA lane does)
  not-applicable  the test does not apply to this release (its reason starts with "not applicable")
  host            anything else: this host cannot run it (no engine, too few GPUs, ...): worth a look
"""

from __future__ import annotations

import pytest

PROPERTY = "vllmcompat_skip_kind"
KINDS = ("lane", "not-applicable", "host")
NOT_APPLICABLE = "not applicable"
_LANE_SKIP = pytest.StashKey[bool]()


def not_on_this_lane(item: pytest.Item, reason: str) -> None:
    """Skip a GPU-marked test; on a lane other than CUDA it is 'not on this lane', on CUDA a host limit."""
    item.stash[_LANE_SKIP] = not reason.startswith("cuda lane")
    pytest.skip(reason)


def classify(item: pytest.Item, report: pytest.TestReport) -> None:
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    longrepr = report.longrepr
    reason = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr or "")
    reason = reason.removeprefix("Skipped: ")
    kind = "lane" if item.stash.get(_LANE_SKIP, False) else "not-applicable" if reason.startswith(NOT_APPLICABLE) else "host"
    report.user_properties.append((PROPERTY, kind))
