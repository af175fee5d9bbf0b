"""The JSON result of one cell run, as typed records: the plugin writes it, the gate reads it.

Schema (version 1)::

    {"schema": 1, "cell": {session, vllm, vllm_description, transformers_line, transformers, torch, lane,
     target, target_label, backend, backend_version, matrix_cell, matrix_problem, modes,
     host: {name, os, glibcxx, gpus, engine, torch_source}},
     "started", "finished", "duration", "exit_status",
     "counts": {passed, failed, skipped, xfailed, xpassed, error},
     "startup": {"colocate_engine": [s, ...], "server": [s, ...]},
     "selection": {modes, deselected, partial, why_partial: [...]},
     "deprecations": [{category, message, where, tests: [...]}],
     "substitutions": [{what, tests: [...]}],
     "recorded"?: {where, when, how},
     "tests": [{nodeid, outcome, duration, reason?, longrepr?, skip_kind?,
                known_failure?: {cause, match, state}, substituted?: [what, ...],
                measured?: {name: value}}]}

`cell.host.torch_source`: "host" when the cell ran on the host interpreter's torch (VLLMCOMPAT_HOST_TORCH), "cell"
when it installed its own, null without torch.
`skip_kind`: lane (a GPU-only test on a lane without GPUs), not-applicable, host. `known_failure.state`:
confirmed (failed with its declared cause), mismatch (failed otherwise: a failure), xpass (passed: a failure),
unverified (skipped here). A result with `selection.partial` comes from a run that did not select the whole suite
(-k, -m, one mode, --lf, explicit tests, stopped early); it is written next to the complete one, never over it.
`substitutions`: pieces this lane cannot run and replaced (e.g. "server weight sync not exercised on the cpu
lane"), with the tests that replaced them. `recorded`: set on a result kept in the repository (matrix/recorded/) from
a run made elsewhere (e.g. the CUDA lane on a lent GPU): where and when it ran, and the command.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

SCHEMA = 1
OUTCOMES = ("passed", "failed", "skipped", "xfailed", "xpassed", "error")


class SchemaError(ValueError):
    """A file is not a result of this schema (the message says which key is wrong)."""


@dataclass
class HostRecord:
    name: str
    os: str
    glibcxx: str | None
    gpus: int
    engine: str | None = None  # how the cell's engine ran on this host (install/engine_route.description)
    torch_source: str | None = None  # "host": the host interpreter's torch (VLLMCOMPAT_HOST_TORCH), "cell": its own


@dataclass
class CellRecord:
    session: str
    vllm: str | None
    vllm_description: str
    transformers_line: str | None
    transformers: str | None
    torch: str | None
    lane: str
    target: str
    target_label: str
    backend: str
    backend_version: str | None
    matrix_cell: bool
    matrix_problem: str
    modes: list[str]
    host: HostRecord


@dataclass
class TestRecord:
    nodeid: str
    outcome: str | None  # one of OUTCOMES once the test has a result
    duration: float = 0.0
    reason: str | None = None  # skip or xfail reason
    longrepr: str | None = None  # short traceback of a failure or error
    skip_kind: str | None = None  # for skips: lane, not-applicable, host
    known_failure: dict[str, str] | None = None  # {cause, match, state} where one is declared for this test
    substituted: list[str] | None = None  # pieces this lane replaced in this test (plugin/recorded.py)
    measured: dict[str, float] | None = None  # numbers a tolerance is derived from (plugin/recorded.py)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None or k == "outcome"}


@dataclass
class Selection:
    modes: list[str] = field(default_factory=list)
    deselected: int | None = None  # None: not known here (xdist workers deselect)
    partial: bool = False
    why_partial: list[str] = field(default_factory=list)


@dataclass
class RunResult:
    cell: CellRecord
    started: str
    finished: str
    duration: float
    exit_status: int
    counts: dict[str, int]
    startup: dict[str, list[float]]
    tests: list[TestRecord] = field(default_factory=list)
    selection: Selection = field(default_factory=Selection)
    # DeprecationWarning / FutureWarning raised on the backend's or vLLM's or transformers' code paths during the
    # run: aliases a later release removes. Recorded and shown; they do not fail a cell.
    deprecations: list[dict[str, Any]] = field(default_factory=list)
    recorded: dict[str, str] | None = None  # {where, when, how} of a result kept from a run elsewhere
    schema: int = SCHEMA

    @property
    def substitutions(self) -> list[dict[str, Any]]:
        return substitutions(self.tests)

    def to_json(self) -> dict[str, Any]:
        return {"schema": self.schema, "cell": asdict(self.cell), "started": self.started, "finished": self.finished,
                "duration": self.duration, "exit_status": self.exit_status, "counts": self.counts,
                "startup": self.startup, "selection": asdict(self.selection), "deprecations": self.deprecations,
                "substitutions": self.substitutions, **({"recorded": self.recorded} if self.recorded else {}),
                "tests": [t.to_json() for t in self.tests]}

    @classmethod
    def from_json(cls, data: Any) -> RunResult:
        """Parse a result; SchemaError names the first missing or malformed key."""
        if not isinstance(data, dict):
            raise SchemaError(f"a result is a JSON object, got {type(data).__name__}")
        try:
            cell = dict(data["cell"])
            host = HostRecord(**_known(HostRecord, cell.pop("host")))
            tests = [TestRecord(**_known(TestRecord, t)) for t in data["tests"]]
            return cls(cell=CellRecord(host=host, **_known(CellRecord, cell)), started=data["started"],
                       finished=data["finished"], duration=data["duration"], exit_status=data["exit_status"],
                       counts=data["counts"], startup=data.get("startup", {}), tests=tests,
                       selection=Selection(**_known(Selection, data.get("selection", {}))),
                       deprecations=list(data.get("deprecations", [])), recorded=data.get("recorded"),
                       schema=data.get("schema", SCHEMA))
        except KeyError as exc:
            raise SchemaError(f"missing key {exc}") from None
        except TypeError as exc:
            raise SchemaError(str(exc)) from None


def substitutions(tests: Iterable[TestRecord]) -> list[dict[str, Any]]:
    """[{what, tests}] over the tests that declared a substitution, in first-seen order."""
    found: dict[str, list[str]] = {}
    for test in tests:
        for what in test.substituted or ():
            found.setdefault(what, []).append(test.nodeid)
    return [{"what": what, "tests": names} for what, names in found.items()]


def _known(cls: type, node: Any) -> dict[str, Any]:
    if not isinstance(node, dict):
        raise SchemaError(f"{cls.__name__}: expected an object, got {node!r}")
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in node.items() if k in names}


def sanitize(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._]+", "-", text).strip("-") or "none"


def file_name(cell: CellRecord, partial: bool = False) -> str:
    return f"{sanitize(cell.session)}-{cell.lane}-{sanitize(cell.target_label)}{'.partial' if partial else ''}.json"


def write(directory: Path, result: RunResult) -> Path:
    """Write `result`; a partial one goes to `<cell>.partial.json`, next to the complete `<cell>.json`."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / file_name(result.cell, result.selection.partial)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    tmp.replace(path)
    return path


def read(path: Path) -> RunResult:
    return RunResult.from_json(json.loads(path.read_text()))
