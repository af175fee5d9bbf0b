"""The gate's verdict as a page: support.md and a self-contained support.html (no scripts)."""

from __future__ import annotations

import html
from collections.abc import Iterator
from datetime import datetime, timezone

from ..matrix import Matrix, target_label
from .verdict import CellResult, Verdict

SYMBOL = {"pass": "✅", "skips": "⚠️", "fail": "❌", "xpass": "🟣", "missing": "❔"}
LEGEND = {
    "pass": "all tests passed (xfails are known failures)",
    "skips": "passed, some tests skipped (e.g. this host cannot load the build)",
    "fail": "a test failed or errored, or the run did not complete",
    "xpass": "a strict known failure passed: upstream fixed? record it in matrix/support.toml",
    "missing": "no result",
}


Key = tuple[str, str, str, str]  # (vLLM, transformers line, lane, target label)

def _startup(r: CellResult, kind: str) -> str:
    values = r.data.startup.get(kind) or []
    return ", ".join(f"{v:.1f}s" for v in values) or "-"


def _run_row(r: CellResult) -> list[str]:
    c = r.cell
    return [
        c.session, c.lane, c.target_label, c.backend_version or "-", c.torch or "-",
        c.transformers or "-", f"{c.host.os} ({c.host.name})",
        _startup(r, "colocate_engine"), _startup(r, "server"), f"{r.data.duration:.1f}s",
    ]


RUN_HEADERS = ["cell", "lane", "target", "backend", "torch", "transformers", "host", "engine startup", "server startup", "duration"]


def _grid_cells(matrix: Matrix, verdict: Verdict, lane: str, label: str) -> Iterator[tuple[str, list[tuple[str, CellResult | None]]]]:
    for v in matrix.vllm_versions:
        yield v, [(t, verdict.results.get((v, t, lane, label))) for t in matrix.transformers]


def headline(verdict: Verdict, lanes: list[str], targets: list[str], require: str) -> str:
    state = "PASSED" if verdict.ok else f"FAILED ({len(verdict.problems)} problem{'s' * (len(verdict.problems) != 1)})"
    return f"Gate {state}: lanes {', '.join(lanes)}; targets {', '.join(map(target_label, targets))}; required: {require} ({len(verdict.required)} cells)"


def markdown(matrix: Matrix, verdict: Verdict, lanes: list[str], targets: list[str], require: str) -> str:
    out = ["# Support table", "", f"**{headline(verdict, lanes, targets, require)}**", ""]
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
                out += [f"- `{t.nodeid}` ({t.outcome})", "", "  ```", *("  " + line for line in (t.longrepr or "").splitlines()), "  ```", ""]
    out += [f"_Other results (not matrix cells, not gated): {', '.join(str(r.path) for r in verdict.others)}_", ""] if verdict.others else []
    return "\n".join(out)


CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#1f2328}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #d0d7de;padding:.4em .7em;text-align:left;vertical-align:top}
.pass{background:#dafbe1}.skips{background:#fff8c5}.fail{background:#ffebe9}.xpass{background:#fbefff}.missing{background:#f6f8fa;color:#656d76}
td a{color:inherit;text-decoration:none}.verdict{padding:.6em 1em;font-weight:600}.verdict.ok{background:#dafbe1}.verdict.bad{background:#ffebe9}
pre{background:#f6f8fa;padding:.6em;overflow:auto;font-size:12px}.legend span{display:inline-block;padding:.1em .5em;margin-right:.5em}"""


def html_page(matrix: Matrix, verdict: Verdict, lanes: list[str], targets: list[str], require: str) -> str:
    e = html.escape
    body = [f'<p class="verdict {"ok" if verdict.ok else "bad"}">{e(headline(verdict, lanes, targets, require))}</p>']
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
                title = e(f"{r.cell.vllm_description} | torch {r.cell.torch} | transformers {r.cell.transformers} | {r.cell.backend} {r.cell.backend_version}")
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
                body.append(f'<div id="{r.anchor}-{i}"><p><code>{e(t.nodeid)}</code> {t.outcome}</p><pre>{e(t.longrepr or "")}</pre></div>')
            body.append("</section>")
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(matrix.backend_name)} x vLLM support table</title>'
        f"<style>{CSS}</style></head><body><h1>{e(matrix.backend_name)} x vLLM support table</h1>\n"
        + "\n".join(body) + f"\n<p><small>generated {generated}</small></p></body></html>\n"
    )
