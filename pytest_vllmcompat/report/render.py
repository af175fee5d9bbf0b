"""The gate's verdict as text: the headline, what the pages share (failures grouped by cause, known failures per
cell), and support.md. The HTML page is page.py."""

from __future__ import annotations

import re
from collections.abc import Iterator

from ..matrix import Matrix, target_label
from .verdict import CellResult, Key, Verdict, run_command

SYMBOL = {"pass": "✅", "attention": "⚠️", "unverified": "⛔", "fail": "❌", "xpass": "🟣", "partial": "◐", "missing": "❔"}
LEGEND = {
    "pass": "passed everything it can run on its lane (xfails are matched known failures; GPU-only tests on the "
            "CPU lane are 'not on this lane')",
    "attention": "passed, but look: a known failure could not be verified here",
    "unverified": "tests skipped because the host that ran the cell could not run them (no engine, too few GPUs, "
                  "a build this CPU cannot execute): the gate does not pass until a host that can runs the cell",
    "fail": "a test failed or errored (a known failure with another error included), or the run did not complete",
    "xpass": "a strict known failure passed: upstream fixed? record it in matrix/support.toml",
    "partial": "only a partial run (-k, -m, one mode, --lf, explicit tests): never counts as the cell",
    "missing": "no result",
}
RUN_HEADERS = ["cell", "lane", "target", "backend", "torch", "transformers", "host", "engine startup",
               "server startup", "duration"]


def headline(verdict: Verdict, lanes: list[str], targets: list[str], require: str) -> str:
    n = len(verdict.problems)
    state = "PASSED" if verdict.ok else f"FAILED ({n} problem{'s' * (n != 1)})"
    text = (f"Gate {state}: lanes {', '.join(lanes)}; targets {', '.join(map(target_label, targets))}; "
            f"required: {require} ({len(verdict.required)} cells)")
    if require == "present" and verdict.missing:
        total = len(verdict.required) + len([k for k in verdict.missing if k not in verdict.required])
        text += f"; {len(verdict.missing)} of {total} matrix cells have no complete result and were not gated"
    return text


NOT_A_CELL = "—"  # a transformers line the target's vLLM release does not accept (derived matrices)


def grid(matrix: Matrix, verdict: Verdict, lane: str,
         label: str) -> Iterator[tuple[str, list[tuple[Key, CellResult | None] | None]]]:
    """Rows of one lane x target grid, over that target's own cells: (vLLM version, [(cell key, its result or its
    partial result or None), or None where that transformers line is not a cell of the version])."""
    cells = verdict.cells_of.get(label, matrix)
    for v in cells.vllm_versions:
        keys = [(v, t, lane, label) if t in cells.lines(v) else None for t in matrix.transformers]
        yield v, [(k, verdict.results.get(k) or verdict.partials.get(k)) if k else None for k in keys]


def _cell_text(matrix: Matrix, item: tuple[Key, CellResult | None] | None) -> str:
    """One grid cell of support.md: not a cell, missing (with its command), or the result's status and counts."""
    if item is None:
        return NOT_A_CELL
    key, r = item
    if r is None:
        return f"{SYMBOL['missing']} missing: `{run_command(matrix, key)}`"
    return f"{SYMBOL[r.status]} {r.counts_text()}" + (f" ({r.provenance})" if r.provenance else "")


def startup(r: CellResult, kind: str) -> str:
    return ", ".join(f"{v:.1f}s" for v in r.data.startup.get(kind) or []) or "-"


def run_row(r: CellResult) -> list[str]:
    c = r.cell
    return [c.session + (" (partial)" if r.partial else ""), c.lane, c.target_label, c.backend_version or "-",
            c.torch or "-", c.transformers or "-", f"{c.host.os} ({c.host.name})" + (f"; {c.host.engine}" if c.host.engine else "")
            + (f"; {r.provenance}" if r.provenance else ""), startup(r, "colocate_engine"),
            startup(r, "server"), f"{r.data.duration:.1f}s"]


def runs(verdict: Verdict) -> list[CellResult]:
    return sorted([*verdict.results.values(), *verdict.partials.values()], key=lambda r: (r.key, r.partial)) \
        + verdict.others


def cause_of(longrepr: str) -> str:
    """One line naming why a test failed: the declared-cause mismatch's actual error, the XPASS line, or the first
    `E ` line of the traceback (the exception), else the first line."""
    lines = longrepr.splitlines()
    for line in lines:
        if line.strip().startswith("actual error:"):
            return line.strip().removeprefix("actual error:").strip()
    if lines and lines[0].startswith("[XPASS(strict)]"):
        return lines[0]
    errors = [line[1:].strip() for line in lines if line.startswith("E ")]
    text = errors[0] if errors else (lines[0] if lines else "no details")
    return re.sub(r"0x[0-9a-f]+", "0x…", text)[:300]


def failures_by_cause(verdict: Verdict) -> dict[str, list[tuple[CellResult, str]]]:
    """cause line -> [(cell, test node id)] over every gated cell: one line per cause, the tests under it."""
    groups: dict[str, list[tuple[CellResult, str]]] = {}
    for r in runs(verdict):
        if r.incomplete:
            groups.setdefault(r.incomplete, []).append((r, "(the whole run)"))
        for t in r.tests("failed", "error"):
            groups.setdefault(cause_of(t.longrepr or ""), []).append((r, t.nodeid))
    return dict(sorted(groups.items(), key=lambda g: -len(g[1])))


def known_failures_of(r: CellResult) -> dict[str, dict[str, list[str]]]:
    """Declared cause -> state (confirmed / unverified / mismatch / xpass) -> tests, for one cell."""
    out: dict[str, dict[str, list[str]]] = {}
    for t in r.data.tests:
        if t.known_failure:
            state = t.known_failure.get("state", "?")
            out.setdefault(t.known_failure.get("cause", "?"), {}).setdefault(state, []).append(t.nodeid)
    return out


def fractions_text(r: CellResult) -> str:
    f = r.fractions
    return f"ran {f['ran']:.0%} / masked by known failures {f['masked']:.0%} / skipped {f['skipped']:.0%}"


def markdown(matrix: Matrix, verdict: Verdict, lanes: list[str], targets: list[str], require: str) -> str:
    all_runs = runs(verdict)
    out = ["# Support table", "", f"**{headline(verdict, lanes, targets, require)}**", ""]
    out += [f"- {p}" for p in verdict.problems] + ([""] if verdict.problems else [])
    for lane, label in verdict.groups:
        out += [f"## {lane} lane, {label}", "",
                "| vLLM | " + " | ".join(f"transformers {t}" for t in matrix.transformers) + " |",
                "|---" * (len(matrix.transformers) + 1) + "|"]
        for v, row in grid(matrix, verdict, lane, label):
            texts = [_cell_text(matrix, item) for item in row]
            out.append(f"| {v} | " + " | ".join(texts) + " |")
        out.append("")
    out += ["Legend: " + "; ".join(f"{SYMBOL[k]} {v}" for k, v in LEGEND.items()), ""]
    causes = failures_by_cause(verdict)
    if causes:
        out += ["## Failures by cause", ""]
        for cause, tests in causes.items():
            out += [f"- **{cause}** ({len(tests)})", *(f"  - {r.label()}: `{nodeid}`" for r, nodeid in tests)]
        out.append("")
    cells = [r for r in all_runs if known_failures_of(r)]
    if cells:
        out += ["## Known failures per cell", ""]
        for r in cells:
            out.append(f"- {r.label()}:")
            for cause, states in known_failures_of(r).items():
                counts = ", ".join(f"{len(v)} {state}" for state, v in states.items())
                out.append(f"  - {counts}: {cause}")
        out.append("")
    deprecated = [r for r in all_runs if r.data.deprecations]
    if deprecated:
        out += ["## Deprecations on the backend's paths (recorded; they do not fail a cell)", ""]
        for r in deprecated:
            out.append(f"- {r.label()}:")
            out += [f"  - {d['category']} in {d['where']}: {d['message']} ({len(d['tests'])} test(s))"
                    for d in r.data.deprecations]
        out.append("")
    replaced = [r for r in all_runs if r.data.substitutions]
    if replaced:
        out += ["## Replaced on the lane (not exercised there; the other lane runs it)", ""]
        out += [f"- {r.label()}: {s['what']} ({len(s['tests'])} test(s))" for r in replaced
                for s in r.data.substitutions]
        out.append("")
    if all_runs:
        out += ["## Runs", "", "| " + " | ".join([*RUN_HEADERS, "suite"]) + " |", "|---" * (len(RUN_HEADERS) + 1) + "|"]
        out += ["| " + " | ".join([*run_row(r), fractions_text(r)]) + " |" for r in all_runs] + [""]
    if verdict.others:
        out += [f"_Other results (not matrix cells, not gated): {', '.join(str(r.path) for r in verdict.others)}_", ""]
    return "\n".join(out)
