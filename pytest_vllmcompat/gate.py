"""The release gate: read the cells' JSON results, decide, and write the support table.

    python -m pytest_vllmcompat gate [--results DIR] [--out DIR] [--lane cpu] [--target SPEC]
                                     [--require all|present]

Required cells are the matrix cells of the asked lanes x targets (`--require all`,
the default) or only those with a result (`--require present`). The gate fails
when a required cell is missing, has a failed or erroring test, did not complete,
or has a strict known failure that passed (XPASS(strict): upstream fixed it?).
Writes `support.md` and a self-contained `support.html` into `--out`.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .matrix import LANES, Matrix, target_label
from .results import OUTCOMES, sanitize

XPASS_STRICT = "[XPASS(strict)]"
EXIT_MEANING = {2: "interrupted", 3: "internal error", 4: "usage error", 5: "no tests ran"}
SYMBOL = {"pass": "✅", "skips": "⚠️", "fail": "❌", "xpass": "🟣", "missing": "❔"}
LEGEND = {
    "pass": "all tests passed (xfails are known failures)",
    "skips": "passed, some tests skipped (e.g. this host cannot load the build)",
    "fail": "a test failed or errored, or the run did not complete",
    "xpass": "a strict known failure passed: upstream fixed? record it in matrix/support.toml",
    "missing": "no result",
}


@dataclass
class CellResult:
    path: Path
    data: dict

    @property
    def cell(self) -> dict:
        return self.data["cell"]

    @property
    def key(self) -> tuple[str, str, str, str]:
        c = self.cell
        return c["vllm"] or "", c["transformers_line"] or "", c["lane"], c["target_label"]

    @property
    def anchor(self) -> str:
        return "cell-" + "-".join(sanitize(part) for part in (self.cell["session"], self.cell["lane"], self.cell["target_label"]))

    def tests(self, *outcomes: str) -> list[dict]:
        return [t for t in self.data["tests"] if t["outcome"] in outcomes]

    @property
    def xpass_strict(self) -> list[dict]:
        return [t for t in self.tests("failed") if str(t.get("longrepr", "")).startswith(XPASS_STRICT)]

    @property
    def incomplete(self) -> str:
        status = self.data.get("exit_status", 0)
        return f"run did not complete (exit status {status}: {EXIT_MEANING[status]})" if status in EXIT_MEANING else ""

    @property
    def status(self) -> str:
        if self.xpass_strict:
            return "xpass"
        if self.tests("failed", "error") or self.incomplete:
            return "fail"
        return "skips" if self.data["counts"].get("skipped") else "pass"

    def counts_text(self, sep: str = ", ") -> str:
        counts = self.data["counts"]
        return sep.join(f"{counts[o]} {o}" for o in OUTCOMES if counts.get(o)) or "no tests"

    def label(self) -> str:
        return f"{self.cell['session']} {self.cell['lane']} {self.cell['target_label']}"


@dataclass
class Verdict:
    groups: list[tuple[str, str]]  # (lane, target label) grids to draw
    required: list[tuple[str, str, str, str]]
    results: dict[tuple[str, str, str, str], CellResult]
    others: list[CellResult]  # results that are not matrix cells
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def load_results(directory: Path) -> tuple[list[CellResult], list[str]]:
    found, notes = [], []
    if not Path(directory).is_dir():
        notes.append(f"no results directory {directory} (cells write there with --vllm-results; nox cells: results/)")
    for path in sorted(Path(directory).glob("**/*.json")):
        try:
            data = json.loads(path.read_text())
            data["cell"]["lane"], data["tests"], data["counts"]  # noqa: B018 (shape check)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            notes.append(f"ignored {path}: not a vllmcompat result ({exc.__class__.__name__}: {exc})")
            continue
        found.append(CellResult(path, data))
    return found, notes


def evaluate(matrix: Matrix, found: list[CellResult], lanes: list[str], targets: list[str], require: str) -> Verdict:
    labels = [target_label(t) for t in targets]
    results: dict = {}
    others, notes = [], []
    for r in found:
        if not r.cell.get("matrix_cell"):
            others.append(r)
            notes.append(f"{r.path}: not a matrix cell ({r.cell.get('matrix_problem') or 'unknown'}); shown, not gated")
        elif r.key in results:  # e.g. a re-run: the latest wins
            older, newer = sorted((results[r.key], r), key=lambda x: x.data.get("finished", ""))
            results[r.key] = newer
            notes.append(f"{r.label()}: two results, using {newer.path} (newer than {older.path})")
        else:
            results[r.key] = r
    asked = [(lane, label) for lane in lanes for label in labels]
    present = [(k[2], k[3]) for k in results]
    groups = list(dict.fromkeys(asked + sorted(present, key=lambda g: (LANES.index(g[0]) if g[0] in LANES else 9, g[1]))))
    required = [(v, t, lane, label) for lane, label in asked for v in matrix.vllm_versions for t in matrix.transformers]
    if require == "present":
        required = [k for k in required if k in results]
    verdict = Verdict(groups, required, results, others, notes=notes)
    if not required:
        verdict.problems.append(f"NO RESULTS  none for lanes {', '.join(lanes)} / targets {', '.join(labels)}")
    for key in required:
        r = results.get(key)
        if r is None:
            session = f"vllm-{key[0]}(tf{key[1]})"
            env = "" if key[2] == "cpu" else f"VLLMCOMPAT_LANE={key[2]} "
            env += "" if key[3] in ("local", target_label(matrix.default_target)) else f"VLLMCOMPAT_TARGET={key[3]} "
            verdict.problems.append(f"MISSING  {session} {key[2]} {key[3]}: no result (run: {env}nox -s \"{session}\")")
            continue
        for t in r.xpass_strict:
            verdict.problems.append(
                f"XPASS    {r.label()}: {t['nodeid']} passed but is a strict known failure ({t['longrepr'][len(XPASS_STRICT):].strip()})"
                " -- upstream fixed? record it in matrix/support.toml"
            )
        failed = [t for t in r.tests("failed", "error") if t not in r.xpass_strict]
        if failed:
            names = ", ".join(f"{t['nodeid']} ({t['outcome']})" for t in failed)
            verdict.problems.append(f"FAILED   {r.label()}: {r.counts_text()}: {names}")
        if r.incomplete:
            verdict.problems.append(f"FAILED   {r.label()}: {r.incomplete}")
    return verdict


def _startup(r: CellResult, kind: str) -> str:
    values = r.data.get("startup", {}).get(kind) or []
    return ", ".join(f"{v:.1f}s" for v in values) or "-"


def _run_row(r: CellResult) -> list[str]:
    c = r.cell
    return [
        c["session"], c["lane"], c["target_label"], c.get("backend_version") or "-", c.get("torch") or "-",
        c.get("transformers") or "-", f"{c['host']['os']} ({c['host']['name']})",
        _startup(r, "colocate_engine"), _startup(r, "server"), f"{r.data.get('duration', 0):.1f}s",
    ]


RUN_HEADERS = ["cell", "lane", "target", "backend", "torch", "transformers", "host", "engine startup", "server startup", "duration"]


def _grid_cells(matrix: Matrix, verdict: Verdict, lane: str, label: str):
    for v in matrix.vllm_versions:
        yield v, [(t, verdict.results.get((v, t, lane, label))) for t in matrix.transformers]


def _headline(verdict: Verdict, lanes: list[str], targets: list[str], require: str) -> str:
    state = "PASSED" if verdict.ok else f"FAILED ({len(verdict.problems)} problem{'s' * (len(verdict.problems) != 1)})"
    return f"Gate {state}: lanes {', '.join(lanes)}; targets {', '.join(map(target_label, targets))}; required: {require} ({len(verdict.required)} cells)"


def render_markdown(matrix: Matrix, verdict: Verdict, lanes: list[str], targets: list[str], require: str) -> str:
    out = ["# Support table", "", f"**{_headline(verdict, lanes, targets, require)}**", ""]
    out += [f"- {p}" for p in verdict.problems] + ([""] if verdict.problems else [])
    for lane, label in verdict.groups:
        out += [f"## {lane} lane, {label}", "", "| vLLM | " + " | ".join(f"transformers {t}" for t in matrix.transformers) + " |"]
        out.append("|---" * (len(matrix.transformers) + 1) + "|")
        for v, row in _grid_cells(matrix, verdict, lane, label):
            texts = [f"{SYMBOL[r.status]} {r.counts_text()}" if r else f"{SYMBOL['missing']} missing" for _, r in row]
            out.append(f"| {v} | " + " | ".join(texts) + " |")
        out.append("")
    out += ["Legend: " + "; ".join(f"{SYMBOL[k]} {v}" for k, v in LEGEND.items()), ""]
    runs = sorted(verdict.results.values(), key=lambda r: r.key) + verdict.others
    if runs:
        out += ["## Runs", "", "| " + " | ".join(RUN_HEADERS) + " |", "|---" * len(RUN_HEADERS) + "|"]
        out += ["| " + " | ".join(_run_row(r)) + " |" for r in runs] + [""]
    failing = [r for r in runs if r.tests("failed", "error")]
    if failing:
        out += ["## Failures", ""]
        for r in failing:
            out += [f"### {r.label()}", ""]
            for t in r.tests("failed", "error"):
                out += [f"- `{t['nodeid']}` ({t['outcome']})", "", "  ```", *("  " + line for line in t.get("longrepr", "").splitlines()), "  ```", ""]
    out += [f"_Other results (not matrix cells, not gated): {', '.join(str(r.path) for r in verdict.others)}_", ""] if verdict.others else []
    return "\n".join(out)


CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#1f2328}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #d0d7de;padding:.4em .7em;text-align:left;vertical-align:top}
.pass{background:#dafbe1}.skips{background:#fff8c5}.fail{background:#ffebe9}.xpass{background:#fbefff}.missing{background:#f6f8fa;color:#656d76}
td a{color:inherit;text-decoration:none}.verdict{padding:.6em 1em;font-weight:600}.verdict.ok{background:#dafbe1}.verdict.bad{background:#ffebe9}
pre{background:#f6f8fa;padding:.6em;overflow:auto;font-size:12px}.legend span{display:inline-block;padding:.1em .5em;margin-right:.5em}"""


def render_html(matrix: Matrix, verdict: Verdict, lanes: list[str], targets: list[str], require: str) -> str:
    e = html.escape
    body = [f'<p class="verdict {"ok" if verdict.ok else "bad"}">{e(_headline(verdict, lanes, targets, require))}</p>']
    if verdict.problems:
        body.append("<ul class=\"problems\">" + "".join(f"<li>{e(p)}</li>" for p in verdict.problems) + "</ul>")
    for lane, label in verdict.groups:
        body.append(f"<h2>{e(lane)} lane, {e(label)}</h2><table><tr><th>vLLM</th>" + "".join(f"<th>transformers {e(t)}</th>" for t in matrix.transformers) + "</tr>")
        for v, row in _grid_cells(matrix, verdict, lane, label):
            tds = []
            for _, r in row:
                if r is None:
                    tds.append('<td class="missing">missing</td>')
                    continue
                text = e(r.counts_text("<br>")).replace("&lt;br&gt;", "<br>")
                title = e(f"{r.cell['vllm_description']} | torch {r.cell.get('torch')} | transformers {r.cell.get('transformers')} | {r.cell['backend']} {r.cell.get('backend_version')}")
                link = f'<a href="#{r.anchor}">{text}</a>' if r.tests("failed", "error") or r.incomplete else text
                tds.append(f'<td class="{r.status}" title="{title}">{link}</td>')
            body.append(f"<tr><th>{e(v)}</th>{''.join(tds)}</tr>")
        body.append("</table>")
    body.append('<p class="legend">' + "".join(f'<span class="{k}"><b>{k}</b>: {e(v)}</span> ' for k, v in LEGEND.items()) + "</p>")
    runs = sorted(verdict.results.values(), key=lambda r: r.key) + verdict.others
    if runs:
        body.append("<h2>Runs</h2><table><tr>" + "".join(f"<th>{h}</th>" for h in RUN_HEADERS) + "</tr>")
        body += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in _run_row(r)) + "</tr>" for r in runs]
        body.append("</table>")
    failing = [r for r in runs if r.tests("failed", "error") or r.incomplete]
    if failing:
        body.append("<h2>Failures</h2>")
        for r in failing:
            body.append(f'<section id="{r.anchor}"><h3>{e(r.label())}</h3>')
            if r.incomplete:
                body.append(f"<p>{e(r.incomplete)}</p>")
            for i, t in enumerate(r.tests("failed", "error"), 1):
                body.append(f'<div id="{r.anchor}-{i}"><p><code>{e(t["nodeid"])}</code> {t["outcome"]}</p><pre>{e(t.get("longrepr", ""))}</pre></div>')
            body.append("</section>")
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(matrix.backend_name)} x vLLM support table</title>'
        f"<style>{CSS}</style></head><body><h1>{e(matrix.backend_name)} x vLLM support table</h1>\n"
        + "\n".join(body) + f"\n<p><small>generated {generated}</small></p></body></html>\n"
    )


def run(matrix: Matrix, results_dir: Path, out_dir: Path, lanes: list[str], targets: list[str], require: str) -> int:
    """The gate: print the verdict, write support.md and support.html; 0 when it passes, 1 when not."""
    lanes = list(LANES) if "all" in lanes or not lanes else lanes
    targets = list(matrix.targets) if "all" in targets else (targets or [matrix.default_target])
    found, notes = load_results(results_dir)
    verdict = evaluate(matrix, found, lanes, targets, require)
    verdict.notes[:0] = notes
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "support.md").write_text(render_markdown(matrix, verdict, lanes, targets, require))
    (out_dir / "support.html").write_text(render_html(matrix, verdict, lanes, targets, require))
    print(f"{len(found)} result(s) in {results_dir}")
    for note in verdict.notes:
        print(f"note: {note}")
    for problem in verdict.problems:
        print(problem)
    print(_headline(verdict, lanes, targets, require))
    print(f"wrote {out_dir / 'support.md'} and {out_dir / 'support.html'}")
    return 0 if verdict.ok else 1
