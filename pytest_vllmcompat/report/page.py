"""support.html: the page a release manager reads instead of logs. One self-contained file, no scripts.

Top to bottom: the verdict and its problems; one grid per lane x target (each cell: status, counts, a bar of what
share of the suite ran / was masked by known failures / skipped, and the command for a missing cell); failures
grouped by cause (one line per cause, the tests under it); known failures per cell with their cause and state;
the runs (versions, host, start-up times); the tracebacks.
"""

from __future__ import annotations

import html
from datetime import datetime, timezone

from ..matrix import Matrix
from .render import (
    LEGEND,
    NOT_A_CELL,
    RUN_HEADERS,
    failures_by_cause,
    fractions_text,
    grid,
    headline,
    known_failures_of,
    run_row,
    runs,
)
from .verdict import CellResult, Key, Verdict, run_command

CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:1.5em 2em;color:#1f2328;max-width:1600px}
h1{font-size:22px;margin:.2em 0 .6em}h2{font-size:17px;margin:1.4em 0 .4em}
table{border-collapse:collapse;margin:.4em 0 1.2em}th,td{border:1px solid #d0d7de;padding:.35em .6em;text-align:left;vertical-align:top}
.grids{display:flex;flex-wrap:wrap;gap:0 1em}.grids section{flex:0 0 auto}.grid td{width:150px;font-size:12.5px}
.grid td code{font-size:11px;overflow-wrap:anywhere}.pass{background:#dafbe1}.attention{background:#fff8c5}.unverified{background:#ffe2c2}.fail{background:#ffebe9}
.xpass{background:#fbefff}.partial{background:#eef4ff}.missing{background:#f6f8fa;color:#656d76}
.status{font-weight:600;text-transform:uppercase;font-size:12px;letter-spacing:.04em}
.bar{display:flex;height:7px;margin:.35em 0 .15em;border-radius:3px;overflow:hidden;background:#eaeef2}
.bar .ran{background:#1a7f37}.bar .masked{background:#9a6700}.bar .skipped{background:#8c959f}
.small{font-size:12px;color:#57606a}code{font-size:12px;background:#f6f8fa;padding:0 .25em}
.verdict{padding:.6em 1em;font-weight:600;font-size:15px}.verdict.ok{background:#dafbe1}.verdict.bad{background:#ffebe9}
ul.problems li{margin:.15em 0}ul.causes>li{margin:.5em 0}ul.causes ul{margin:.15em 0;columns:2}
pre{background:#f6f8fa;padding:.6em;overflow:auto;font-size:12px;max-height:22em}
.legend span{display:inline-block;padding:.15em .5em;margin:0 .4em .3em 0}"""
STATUS_TEXT = {"pass": "pass", "attention": "look", "unverified": "unverified", "fail": "fail", "xpass": "xpass", "partial": "partial only"}


def _e(text: object) -> str:
    return html.escape(str(text))


def _cell(matrix: Matrix, key: Key, r: CellResult | None) -> str:
    if r is None:
        return f'<td class="missing"><div class="status">missing</div><code>{_e(run_command(matrix, key))}</code></td>'
    f = r.fractions
    bar = "".join(f'<span class="{k}" style="width:{f[k] * 100:.1f}%"></span>' for k in ("ran", "masked", "skipped"))
    title = (f"{r.cell.vllm_description} | torch {r.cell.torch} | transformers {r.cell.transformers} | "
             f"{r.cell.backend} {r.cell.backend_version}")
    notes = [*r.attention, *([f"partial: {'; '.join(r.data.selection.why_partial)}"] if r.partial else []),
             *([r.provenance] if r.provenance else [])]
    counts = _e(r.counts_text())
    link = f'<a href="#{r.anchor}">{counts}</a>' if r.tests("failed", "error") or r.incomplete else counts
    return (f'<td class="{r.status}" title="{_e(title)}"><div class="status">{STATUS_TEXT[r.status]}</div>{link}'
            f'<div class="bar">{bar}</div><div class="small">{_e(fractions_text(r))}</div>'
            + "".join(f'<div class="small">{_e(n)}</div>' for n in notes) + "</td>")


def html_page(matrix: Matrix, verdict: Verdict, lanes: list[str], targets: list[str], require: str) -> str:
    all_runs = runs(verdict)
    body = [f'<p class="verdict {"ok" if verdict.ok else "bad"}">{_e(headline(verdict, lanes, targets, require))}</p>']
    if verdict.problems:  # one line here; the full list follows the grids
        kinds: dict[str, int] = {}
        for problem in verdict.problems:
            kinds[problem.split()[0]] = kinds.get(problem.split()[0], 0) + 1
        body.append("<p>" + ", ".join(f"{n} {k.lower()}" for k, n in kinds.items())
                    + ' (<a href="#problems">the list</a>)</p>')
    body.append('<div class="grids">')
    for lane, label in verdict.groups:
        body.append(f'<section><h2>{_e(lane)} lane, {_e(label)}</h2><table class="grid"><tr><th>vLLM</th>'
                    + "".join(f"<th>transformers {_e(t)}</th>" for t in matrix.transformers) + "</tr>")
        for v, row in grid(matrix, verdict, lane, label):
            body.append(f"<tr><th>{_e(v)}</th>{''.join(_cell(matrix, *item) if item else f'<td>{NOT_A_CELL}</td>' for item in row)}</tr>")
        body.append("</table></section>")
    body.append("</div>")
    body.append('<p class="legend">' + "".join(f'<span class="{k}"><b>{STATUS_TEXT.get(k, k)}</b>: {_e(v)}</span>'
                                               for k, v in LEGEND.items()) + "</p>")
    if verdict.problems:
        body.append('<h2 id="problems">Problems</h2><ul class="problems">'
                    + "".join(f"<li>{_e(p)}</li>" for p in verdict.problems) + "</ul>")
    causes = failures_by_cause(verdict)
    if causes:
        body.append('<h2>Failures by cause</h2><ul class="causes">')
        for cause, tests in causes.items():
            items = "".join(f'<li><a href="#{r.anchor}">{_e(r.label())}</a>: <code>{_e(n)}</code></li>' for r, n in tests)
            body.append(f"<li><b>{_e(cause)}</b> ({len(tests)})<ul>{items}</ul></li>")
        body.append("</ul>")
    known = [(r, known_failures_of(r)) for r in all_runs]
    known = [(r, k) for r, k in known if k]
    if known:
        body.append("<h2>Known failures per cell</h2><table><tr><th>cell</th><th>tests</th><th>declared cause</th></tr>")
        for r, causes_of_cell in known:
            for cause, states in causes_of_cell.items():
                counts = ", ".join(f"{len(v)} {s}" for s, v in states.items())
                body.append(f"<tr><td>{_e(r.label())}</td><td>{_e(counts)}</td><td>{_e(cause)}</td></tr>")
        body.append("</table>")
    deprecated = [r for r in all_runs if r.data.deprecations]
    if deprecated:
        body.append("<h2>Deprecations on the backend's paths</h2><p class=\"small\">Aliases a later release "
                    "removes; recorded, they do not fail a cell.</p><table><tr><th>cell</th><th>warning</th>"
                    "<th>where</th><th>tests</th></tr>")
        body += [f"<tr><td>{_e(r.label())}</td><td>{_e(d['category'])}: {_e(d['message'])}</td><td>{_e(d['where'])}"
                 f"</td><td>{len(d['tests'])}</td></tr>" for r in deprecated for d in r.data.deprecations]
        body.append("</table>")
    replaced = [r for r in all_runs if r.data.substitutions]
    if replaced:
        body.append("<h2>Replaced on the lane</h2><p class=\"small\">Not exercised there; the other lane runs "
                    "it.</p><table><tr><th>cell</th><th>what</th><th>tests</th></tr>")
        body += [f"<tr><td>{_e(r.label())}</td><td>{_e(s['what'])}</td><td>{len(s['tests'])}</td></tr>"
                 for r in replaced for s in r.data.substitutions]
        body.append("</table>")
    if all_runs:
        body.append("<h2>Runs</h2><table><tr>" + "".join(f"<th>{h}</th>" for h in [*RUN_HEADERS, "suite"]) + "</tr>")
        body += ["<tr>" + "".join(f"<td>{_e(c)}</td>" for c in [*run_row(r), fractions_text(r)]) + "</tr>"
                 for r in all_runs]
        body.append("</table>")
    failing = [r for r in all_runs if r.tests("failed", "error") or r.incomplete]
    if failing:
        body.append("<h2>Tracebacks</h2>")
        for r in failing:
            body.append(f'<section id="{r.anchor}"><h3>{_e(r.label())}</h3>')
            if r.incomplete:
                body.append(f"<p>{_e(r.incomplete)}</p>")
            for i, t in enumerate(r.tests("failed", "error"), 1):
                body.append(f'<div id="{r.anchor}-{i}"><p><code>{_e(t.nodeid)}</code> {t.outcome}</p>'
                            f"<pre>{_e(t.longrepr or '')}</pre></div>")
            body.append("</section>")
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    title = f"{_e(matrix.backend_name)} x vLLM support table"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{CSS}</style></head><body><h1>{title}</h1>\n" + "\n".join(body)
            + f'\n<p class="small">generated {generated}</p></body></html>\n')
