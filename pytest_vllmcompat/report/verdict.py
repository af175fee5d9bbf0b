"""A cell's result as the gate sees it (CellResult), the gate's verdict (Verdict), and loading results from disk."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..matrix import Matrix, target_label
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
    def partial(self) -> bool:
        return self.data.selection.partial

    def skipped(self, kind: str) -> list[TestRecord]:
        """Skipped tests of one kind: lane, not-applicable or host (results without kinds count as host)."""
        return [t for t in self.tests("skipped") if (t.skip_kind or "host") == kind]

    @property
    def host_reasons(self) -> list[str]:
        """The distinct reasons of its host skips, most frequent first."""
        reasons = [t.reason or "no reason given" for t in self.skipped("host")]
        return sorted(set(reasons), key=lambda r: (-reasons.count(r), r))

    def known_failures(self, state: str) -> list[TestRecord]:
        return [t for t in self.data.tests if t.known_failure and t.known_failure.get("state") == state]

    @property
    def attention(self) -> list[str]:
        """Notes shown in the cell: host skips (they make it unverified, see status) and known failures not verified
        here (alone they make it yellow)."""
        notes = []
        if self.skipped("host"):
            notes.append(f"{len(self.skipped('host'))} skipped for a host reason")
        # A known failure of a test this lane can never run (GPU-only on the CPU lane) is the other lane's to verify.
        unverified = [t for t in self.known_failures("unverified") if t.skip_kind != "lane"]
        if unverified:
            notes.append(f"{len(unverified)} known failure(s) unverified here")
        return notes

    @property
    def status(self) -> str:
        if self.xpass_strict:
            return "xpass"
        if self.tests("failed", "error") or self.incomplete:
            return "fail"
        if self.partial:
            return "partial"
        if self.skipped("host"):  # this host could not run them: no host checked them, so the gate cannot pass
            return "unverified"
        return "attention" if self.attention else "pass"

    def counts_text(self, sep: str = ", ") -> str:
        counts = self.data.counts
        parts = [f"{counts[o]} {o}" for o in OUTCOMES if counts.get(o) and o != "skipped"]
        kinds = {"lane": "not on this lane", "not-applicable": "not applicable", "host": "skipped (host)"}
        parts += [f"{len(self.skipped(k))} {text}" for k, text in kinds.items() if self.skipped(k)]
        return sep.join(parts) or "no tests"

    @property
    def fractions(self) -> dict[str, float]:
        """Share of the cell's tests that ran (passed, failed, errored), were masked by known failures (xfailed),
        or were skipped."""
        total = len(self.data.tests) or 1
        ran = len(self.tests("passed", "failed", "error", "xpassed"))
        return {"ran": ran / total, "masked": len(self.tests("xfailed")) / total,
                "skipped": len(self.tests("skipped")) / total}

    def label(self) -> str:
        return f"{self.cell.session} {self.cell.lane} {self.cell.target_label}"

    @property
    def provenance(self) -> str | None:
        """Where and when a result kept from a run elsewhere ran (matrix/recorded/), else None."""
        rec = self.data.recorded
        return f"recorded on {rec.get('where', '?')}, {rec.get('when', '?')}" if rec else None


@dataclass
class Verdict:
    groups: list[tuple[str, str]]  # (lane, target label) grids to draw
    required: list[Key]
    results: dict[Key, CellResult]
    others: list[CellResult]  # results that are not matrix cells
    partials: dict[Key, CellResult] = field(default_factory=dict)  # newest partial result per cell
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    missing: list[Key] = field(default_factory=list)  # matrix cells of the asked lanes x targets with no complete result
    cells_of: dict[str, Matrix] = field(default_factory=dict)  # target label -> its cells (derived targets)

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


def key_label(key: Key) -> str:
    return f"vllm-{key[0]}(tf{key[1]}) {key[2]} {key[3]}"


def run_command(matrix: Matrix, key: Key) -> str:
    """The command that produces the result of cell `key`."""
    session = f"vllm-{key[0]}(tf{key[1]})"
    env = "" if key[2] == "cpu" else f"VLLMCOMPAT_LANE={key[2]} "
    env += "" if key[3] in ("local", target_label(matrix.default_target)) else f"VLLMCOMPAT_TARGET={key[3]} "
    return f'{env}nox -s "{session}"'
