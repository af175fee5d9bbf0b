"""The release gate: read the cells' JSON results, decide, and write the support table.

    python -m pytest_vllmcompat gate [--results DIR] [--out DIR] [--lane cpu] [--target SPEC]
                                     [--require all|present] [--recorded DIR]
    python -m pytest_vllmcompat record RESULT --where TEXT [--how CMD]   (keeps it in matrix/recorded/)

Required cells are the matrix cells of the asked lanes x targets (`--require all`,
the default) or only those with a result (`--require present`). The gate fails
when a required cell is missing, has a failed or erroring test, did not complete,
or has a strict known failure that passed (XPASS(strict): upstream fixed it?).
Writes `support.md` and a self-contained `support.html` into `--out`. Results recorded from runs elsewhere
(matrix/recorded/, e.g. the CUDA lane on a lent GPU; written by `record`) are read too and shown with where and when
they ran; like any result, they are gated when their lane and target are asked.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import VllmcompatError
from ..install.target_range import target_matrix
from ..matrix import LANES, Matrix, target_label
from . import page, render
from .schema import SchemaError, read, write
from .verdict import XPASS_STRICT, CellResult, Key, Verdict, key_label, load_results, run_command

RECORDED = Path(__file__).resolve().parent.parent.parent / "matrix" / "recorded"


def record(result: Path, where: str, how: str, into: Path) -> Path:
    """Keep `result` (a cell's JSON from a run elsewhere) in `into` with where/when/how it ran."""
    try:
        data = read(result)
    except (OSError, ValueError, SchemaError) as exc:
        raise VllmcompatError(f"{result}: not a vllmcompat result ({exc})") from None
    if data.selection.partial:
        raise VllmcompatError(f"{result}: a partial run ({'; '.join(data.selection.why_partial)}) never stands for a "
                              "cell; record a complete one")
    data.recorded = {"where": where, "when": data.finished, "how": how}
    return write(into, data)


def evaluate(matrix: Matrix, found: list[CellResult], lanes: list[str], targets: list[str], require: str,
             cells_of: dict[str, Matrix] | None = None) -> Verdict:
    """`cells_of`: target label -> the matrix of that target's cells (a later release's own declared range,
    install/target_range.py); a target not in it has the seed matrix's cells."""
    labels = [target_label(t) for t in targets]
    cells_of = cells_of or {}
    results: dict[Key, CellResult] = {}
    partials: dict[Key, CellResult] = {}
    others: list[CellResult] = []
    notes: list[str] = []
    for r in found:
        if not r.cell.matrix_cell:
            others.append(r)
            notes.append(f"{r.path}: not a matrix cell ({r.cell.matrix_problem or 'unknown'}); shown, not gated")
            continue
        kept = partials if r.partial else results  # a partial run never stands for the complete cell
        if r.key in kept:  # e.g. a re-run: the latest wins
            older, newer = sorted((kept[r.key], r), key=lambda x: x.data.finished)
            kept[r.key] = newer
            notes.append(f"{r.label()}: two {'partial ' if r.partial else ''}results, using {newer.path} "
                         f"(newer than {older.path})")
        else:
            kept[r.key] = r
    asked = [(lane, label) for lane in lanes for label in labels]
    present = [(k[2], k[3]) for k in [*results, *partials]]
    groups = list(dict.fromkeys(asked + sorted(present, key=lambda g: (LANES.index(g[0]) if g[0] in LANES else 9, g[1]))))
    required = [(v, t, lane, label) for lane, label in asked
                for m in [cells_of.get(label, matrix)] for v in m.vllm_versions for t in m.lines(v)]
    missing = [k for k in required if k not in results]
    if require == "present":
        required = [k for k in required if k in results or k in partials]
    verdict = Verdict(groups, required, results, others, partials=partials, notes=notes, missing=missing,
                      cells_of=cells_of)
    if not required:
        verdict.problems.append(f"NO RESULTS  none for lanes {', '.join(lanes)} / targets {', '.join(labels)}")
    for key in required:
        found_result = results.get(key)
        if found_result is None and key in partials:
            p = partials[key]
            verdict.problems.append(f"PARTIAL  {p.label()}: only a partial run ({'; '.join(p.data.selection.why_partial)}), "
                                    f"which never counts as the cell (run: {run_command(matrix, key)})")
            continue
        if found_result is None:
            verdict.problems.append(f"MISSING  {key_label(key)}: no result (run: {run_command(matrix, key)})")
            continue
        r = found_result
        for t in r.xpass_strict:
            verdict.problems.append(
                f"XPASS    {r.label()}: {t.nodeid} passed but is a strict known failure ({(t.longrepr or '')[len(XPASS_STRICT):].strip()})"
                " -- upstream fixed? record it in matrix/support.toml"
            )
        for t in r.known_failures("mismatch"):
            kf = t.known_failure or {}
            verdict.problems.append(f"MISMATCH {r.label()}: {t.nodeid} failed, but not with its declared known failure "
                                    f"({kf.get('cause')}; pattern: {kf.get('match')})")
        failed = [t for t in r.tests("failed", "error") if t not in r.xpass_strict]
        if failed:
            names = ", ".join(f"{t.nodeid} ({t.outcome})" for t in failed)
            verdict.problems.append(f"FAILED   {r.label()}: {r.counts_text()}: {names}")
        if r.incomplete:
            verdict.problems.append(f"FAILED   {r.label()}: {r.incomplete}")
        elif not failed and r.skipped("host"):
            reasons = r.host_reasons
            verdict.problems.append(f"UNVERIFIED {r.label()}: {len(r.skipped('host'))} test(s) skipped because this "
                                    f"host could not run them, so nothing checked them: {reasons[0]}"
                                    + (f" (and {len(reasons) - 1} other reason(s))" if len(reasons) > 1 else "")
                                    + " -- run the cell on a host that can")
    return verdict


def run(matrix: Matrix, results_dir: Path, out_dir: Path, lanes: list[str], targets: list[str], require: str,
        recorded_dir: Path | None = None) -> int:
    """The gate: print the verdict, write support.md and support.html; 0 when it passes, 1 when not."""
    lanes = list(LANES) if "all" in lanes or not lanes else lanes
    targets = list(matrix.targets) if "all" in targets else (targets or [matrix.default_target])
    found, notes = load_results(results_dir)
    counted = f"{len(found)} result(s) in {results_dir}"
    if recorded_dir is not None and recorded_dir.is_dir():
        kept, kept_notes = load_results(recorded_dir)
        notes += kept_notes + [f"{r.path}: no `recorded` field (write it with `python -m pytest_vllmcompat record`); "
                               "ignored" for r in kept if not r.data.recorded]
        recorded = [r for r in kept if r.data.recorded]
        found += recorded
        counted += f", {len(recorded)} recorded in {recorded_dir}"
    shown = dict.fromkeys([*targets, *(r.cell.target for r in found if r.cell.matrix_cell)])
    try:  # each target's own cells (the seed matrix's targets ask no index)
        cells_of = {target_label(t): target_matrix(matrix, t)[0] for t in shown}
    except VllmcompatError as exc:
        print(f"error: {exc}")
        return 2
    verdict = evaluate(matrix, found, lanes, targets, require, cells_of)
    verdict.notes[:0] = notes
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "support.md").write_text(render.markdown(matrix, verdict, lanes, targets, require))
    (out_dir / "support.html").write_text(page.html_page(matrix, verdict, lanes, targets, require))
    print(counted)
    for note in verdict.notes:
        print(f"note: {note}")
    for problem in verdict.problems:
        print(problem)
    print(render.headline(verdict, lanes, targets, require))
    print(f"wrote {out_dir / 'support.md'} and {out_dir / 'support.html'}")
    return 0 if verdict.ok else 1
