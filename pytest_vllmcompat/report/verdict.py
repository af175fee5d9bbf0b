"""A cell's result as the gate sees it (CellResult), the gate's verdict (Verdict), and loading results from disk."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .schema import (
    OUTCOMES,
    CellRecord,
    RunResult,
    SchemaError,
    TestRecord,
    read,
    sanitize,
)

Key = tuple[str, str, str, str]  # (vLLM, transformers line, lane, target label)
XPASS_STRICT = "[XPASS(strict)]"
EXIT_MEANING = {2: "interrupted", 3: "internal error", 4: "usage error", 5: "no tests ran"}


@dataclass
class CellResult:
    path: Path
    data: RunResult

    @property
    def cell(self) -> CellRecord:
        return self.data.cell

    @property
    def key(self) -> Key:
        c = self.cell
        return c.vllm or "", c.transformers_line or "", c.lane, c.target_label

    @property
    def anchor(self) -> str:
        return "cell-" + "-".join(sanitize(part) for part in (self.cell.session, self.cell.lane, self.cell.target_label))

    def tests(self, *outcomes: str) -> list[TestRecord]:
        return [t for t in self.data.tests if t.outcome in outcomes]

    @property
    def xpass_strict(self) -> list[TestRecord]:
        return [t for t in self.tests("failed") if (t.longrepr or "").startswith(XPASS_STRICT)]

    @property
    def incomplete(self) -> str:
        status = self.data.exit_status
        return f"run did not complete (exit status {status}: {EXIT_MEANING[status]})" if status in EXIT_MEANING else ""

    @property
    def status(self) -> str:
        if self.xpass_strict:
            return "xpass"
        if self.tests("failed", "error") or self.incomplete:
            return "fail"
        return "skips" if self.data.counts.get("skipped") else "pass"

    def counts_text(self, sep: str = ", ") -> str:
        counts = self.data.counts
        return sep.join(f"{counts[o]} {o}" for o in OUTCOMES if counts.get(o)) or "no tests"

    def label(self) -> str:
        return f"{self.cell.session} {self.cell.lane} {self.cell.target_label}"


@dataclass
class Verdict:
    groups: list[tuple[str, str]]  # (lane, target label) grids to draw
    required: list[Key]
    results: dict[Key, CellResult]
    others: list[CellResult]  # results that are not matrix cells
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def load_results(directory: Path) -> tuple[list[CellResult], list[str]]:
    found: list[CellResult] = []
    notes: list[str] = []
    if not Path(directory).is_dir():
        notes.append(f"no results directory {directory} (cells write there with --vllm-results; nox cells: results/)")
    for path in sorted(Path(directory).glob("**/*.json")):
        try:
            data = read(path)
        except (OSError, ValueError, SchemaError) as exc:
            notes.append(f"ignored {path}: not a vllmcompat result ({exc.__class__.__name__}: {exc})")
            continue
        found.append(CellResult(path, data))
    return found, notes
