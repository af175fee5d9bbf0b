"""Known failures that forgive only their cause.

A test with a declared known failure (matrix/support.toml) runs normally; its report is then judged:

  fails, and the failure text matches the entry's `match`   -> xfailed ("confirmed"), reason = the cause
  fails otherwise                                           -> failed ("mismatch"); the report quotes the declared
                                                               cause, the pattern and the actual error
  passes                                                    -> failed as [XPASS(strict)] ("xpass")
  skipped                                                   -> skipped, recorded as "unverified" (the reason says so)

The failure text is the exception's type and message, with its chained causes, else the report's text.
`--runxfail` turns the judgement off (the real outcome is reported), as for pytest's own xfail.
"""

from __future__ import annotations

from typing import Any

import pytest

from ..matrix import KnownFailure

KNOWN_KEY = pytest.StashKey[list[KnownFailure]]()
PROPERTY = "vllmcompat_known_failure"
XPASS_STRICT = "[XPASS(strict)]"


def failure_text(call: pytest.CallInfo[None], report: pytest.TestReport) -> str:
    """'Type: message' of the exception and each exception it was raised from or during; else the report."""
    excinfo = call.excinfo
    if excinfo is None:
        return report.longreprtext
    parts, seen = [], set()
    exc: BaseException | None = excinfo.value
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        parts.append(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}".removeprefix("builtins."))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


def _record(report: pytest.TestReport, kf: KnownFailure, state: str) -> None:
    report.user_properties.append((PROPERTY, {"cause": kf.cause, "match": kf.match, "state": state}))


def judge(item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport) -> None:
    """Apply the item's known failures to `report` (in place)."""
    known = item.stash.get(KNOWN_KEY, [])
    if not known or item.config.option.runxfail:
        return
    kf = known[0]
    if report.skipped and report.when in ("setup", "call"):
        _record(report, kf, "unverified")
        return
    if report.failed and report.when in ("setup", "call"):
        text = failure_text(call, report)
        matching = next((k for k in known if k.matches(text)), None)
        if matching is not None:
            report.outcome = "skipped"
            report.wasxfail = matching.reason
            _record(report, matching, "confirmed")
            return
        report.longrepr = _mismatch(known, text, report)
        _record(report, kf, "mismatch")
        return
    if report.passed and report.when == "call":
        report.outcome = "failed"
        report.longrepr = f"{XPASS_STRICT} {kf.reason}"
        _record(report, kf, "xpass")


def _mismatch(known: list[KnownFailure], text: str, report: pytest.TestReport) -> Any:
    declared = "\n".join(f"  declared cause: {k.cause}\n  its pattern:    {k.match}" for k in known)
    return (f"failed, but not with its declared known failure (a known failure forgives only its cause):\n"
            f"{declared}\n  actual error:   {text.strip()}\n\n{report.longreprtext}")
