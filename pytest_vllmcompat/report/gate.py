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

from pathlib import Path

from ..matrix import LANES, Matrix, target_label
from . import render
from .verdict import XPASS_STRICT, CellResult, Key, Verdict, load_results


def evaluate(matrix: Matrix, found: list[CellResult], lanes: list[str], targets: list[str], require: str) -> Verdict:
    labels = [target_label(t) for t in targets]
    results: dict[Key, CellResult] = {}
    others: list[CellResult] = []
    notes: list[str] = []
    for r in found:
        if not r.cell.matrix_cell:
            others.append(r)
            notes.append(f"{r.path}: not a matrix cell ({r.cell.matrix_problem or 'unknown'}); shown, not gated")
        elif r.key in results:  # e.g. a re-run: the latest wins
            older, newer = sorted((results[r.key], r), key=lambda x: x.data.finished)
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
        found_result = results.get(key)
        if found_result is None:
            session = f"vllm-{key[0]}(tf{key[1]})"
            env = "" if key[2] == "cpu" else f"VLLMCOMPAT_LANE={key[2]} "
            env += "" if key[3] in ("local", target_label(matrix.default_target)) else f"VLLMCOMPAT_TARGET={key[3]} "
            verdict.problems.append(f"MISSING  {session} {key[2]} {key[3]}: no result (run: {env}nox -s \"{session}\")")
            continue
        r = found_result
        for t in r.xpass_strict:
            verdict.problems.append(
                f"XPASS    {r.label()}: {t.nodeid} passed but is a strict known failure ({(t.longrepr or '')[len(XPASS_STRICT):].strip()})"
                " -- upstream fixed? record it in matrix/support.toml"
            )
        failed = [t for t in r.tests("failed", "error") if t not in r.xpass_strict]
        if failed:
            names = ", ".join(f"{t.nodeid} ({t.outcome})" for t in failed)
            verdict.problems.append(f"FAILED   {r.label()}: {r.counts_text()}: {names}")
        if r.incomplete:
            verdict.problems.append(f"FAILED   {r.label()}: {r.incomplete}")
    return verdict


def run(matrix: Matrix, results_dir: Path, out_dir: Path, lanes: list[str], targets: list[str], require: str) -> int:
    """The gate: print the verdict, write support.md and support.html; 0 when it passes, 1 when not."""
    lanes = list(LANES) if "all" in lanes or not lanes else lanes
    targets = list(matrix.targets) if "all" in targets else (targets or [matrix.default_target])
    found, notes = load_results(results_dir)
    verdict = evaluate(matrix, found, lanes, targets, require)
    verdict.notes[:0] = notes
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "support.md").write_text(render.markdown(matrix, verdict, lanes, targets, require))
    (out_dir / "support.html").write_text(render.html_page(matrix, verdict, lanes, targets, require))
    print(f"{len(found)} result(s) in {results_dir}")
    for note in verdict.notes:
        print(f"note: {note}")
    for problem in verdict.problems:
        print(problem)
    print(render.headline(verdict, lanes, targets, require))
    print(f"wrote {out_dir / 'support.md'} and {out_dir / 'support.html'}")
    return 0 if verdict.ok else 1
