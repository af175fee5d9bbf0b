"""The whole cell as `nox -R -s SESSION` runs it (env present), and where its wall time goes (issue #15).

The phases come from the cell's results file (each test's duration includes its fixtures' setup, so the
test that first needs an engine carries that engine's start-up) and are grouped by what the tests do:
  before pytest      nox, the cell's `versions` step, pytest's start-up (the nox wall minus pytest's session)
  collection + rest  pytest's session minus the tests (collection, session teardown: engines and servers stopped)
  one group per PHASES entry, then "other tests".
The session engine and server start-ups are listed separately (from the results' `startup`): they are inside the
durations of the tests that first needed them (the server's early start overlaps the tests before), not added.
So is the server trainer child's own wall time (`background`, from its tests' `trainer_child_seconds`): it runs
beside the engine tests, and only what its tests still wait for after them is in their phase.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .measure import nox_command, run_timed

SERVER_CHILD_PHASE = "server trainer runs (waiting on their child)"
# (phase, nodeid pattern): the first matching phase takes a test.
PHASES = (
    ("patch probes (fresh interpreters)", r"tests/compat/test_patch(es|_tripwires)\.py::"),
    ("colocate trainer runs (children)", r"tests/compat/test_trainers\.py::test_\w*colocate"),
    (SERVER_CHILD_PHASE, r"tests/compat/test_trainers\.py::"),
    ("float32 server + structured outputs", r"tests/compat/test_structured_outputs\.py::"),
    ("session server's breaking tests (last)", r"::test_over_long_prompt_is_(an_error|400)"),
    ("GPU tests", r"tests/compat/test_gpu\.py::"),
)

def whole_cell(session: str, workdir: Path, caches: dict[str, str]) -> dict:
    """Run the cell once (with these compile-cache variables); its wall time, peak memory, phases, start-ups."""
    results = workdir / f"cell-results-{len(list(workdir.glob('cell-results-*')))}"
    r = run_timed([nox_command(), "-R", "-s", session, "--", "--vllm-results", str(results)],
                  env={**os.environ, **caches}, log=workdir / f"{results.name}.log")
    files = sorted(results.glob("*.json"))
    if not files:
        raise SystemExit(f"the cell wrote no results (exit {r['rc']}):\n{r['tail']}")
    result = json.loads(files[-1].read_text())
    r.update(breakdown(result, r["wall"]))
    r.pop("output", None)
    return r


def breakdown(result: dict, wall: float) -> dict:
    """Phases (seconds) of one cell run from its results and the nox wall time."""
    tests = result["tests"]
    phases: dict[str, float] = {name: 0.0 for name, _ in PHASES}
    phases["other tests"] = 0.0
    for t in tests:
        phases[phase_of(t["nodeid"])] += t["duration"]
    in_tests = sum(t["duration"] for t in tests)
    out = {"before pytest": wall - result["duration"], "collection + rest": result["duration"] - in_tests, **phases}
    background = [t["measured"]["trainer_child_seconds"] for t in tests if phase_of(t["nodeid"]) == SERVER_CHILD_PHASE
                  and "trainer_child_seconds" in (t.get("measured") or {})]
    return {"phases": {k: round(v, 1) for k, v in out.items() if v or k in ("before pytest", "collection + rest")},
            "background": {"server trainer child": max(background)} if background else {},
            "startup": result.get("startup", {}), "counts": result.get("counts", {}),
            "pytest_seconds": result["duration"]}


def phase_of(nodeid: str) -> str:
    for name, pattern in PHASES:
        if re.search(pattern, nodeid):
            return name
    return "other tests"
