"""Results JSON written by the plugin, and the release gate over them (no vLLM needed)."""

import json
import sys

import pytest

from pytest_vllmcompat import __main__ as cli
from pytest_vllmcompat import matrix

MATRIX = matrix.load()
DEFAULT = MATRIX.default_target


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("VLLMCOMPAT_RESULTS", "VLLMCOMPAT_LANE", "VLLMCOMPAT_TARGET", "VLLMCOMPAT_MATRIX", "VLLMCOMPAT_MODE"):
        monkeypatch.delenv(name, raising=False)


PASSING = [
    {"nodeid": "tests/compat/test_identity.py::test_vllm_reports_the_upstream_version", "outcome": "passed", "duration": 0.1},
    {"nodeid": "tests/compat/test_generation.py::test_greedy[colocate]", "outcome": "passed", "duration": 2.0},
    {"nodeid": "tests/compat/test_generation.py::test_greedy[server]", "outcome": "passed", "duration": 1.0},
    {"nodeid": "tests/compat/test_patches.py::test_patch", "outcome": "passed", "duration": 0.2},
]


def result(vllm, tf, lane="cpu", target=DEFAULT, tests=PASSING, exit_status=0, matrix_cell=True):
    counts = {o: sum(t["outcome"] == o for t in tests) for o in ("passed", "failed", "skipped", "xfailed", "xpassed", "error")}
    return {
        "schema": 1,
        "cell": {
            "session": f"vllm-{vllm}(tf{tf})", "vllm": vllm, "vllm_description": f"vllm {vllm}", "transformers_line": tf,
            "transformers": f"{tf}.1.0", "torch": "2.8.0", "lane": lane, "target": target,
            "target_label": matrix.target_label(target), "backend": "trl", "backend_version": target.split("==")[-1],
            "matrix_cell": matrix_cell, "matrix_problem": "", "modes": ["colocate", "server"],
            "host": {"name": "ci", "os": "Ubuntu 24.04 LTS", "glibcxx": "3.4.33", "gpus": 0},
        },
        "started": "2026-01-01T00:00:00+00:00", "finished": "2026-01-01T00:05:00+00:00", "duration": 300.0,
        "exit_status": exit_status, "counts": counts,
        "startup": {"colocate_engine": [21.5], "server": [33.25]}, "tests": tests,
    }


def write_cells(directory, overrides=None, skip=()):
    """One passing result per CPU cell of the default target, except `skip`; `overrides`: session -> result."""
    directory.mkdir(parents=True, exist_ok=True)
    for cell in MATRIX.cells("cpu"):
        if cell.session in skip:
            continue
        data = (overrides or {}).get(cell.session) or result(cell.vllm, cell.transformers)
        (directory / f"{cell.session}.json").write_text(json.dumps(data))


def gate(tmp_path, capsys, *args):
    # --recorded: an empty folder, not the repository's matrix/recorded/ (whose kept runs would join every grid)
    rc = cli.main(["gate", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "out"),
                   "--recorded", str(tmp_path / "recorded"), *args])
    out = capsys.readouterr().out
    return rc, out, (tmp_path / "out" / "support.md").read_text(), (tmp_path / "out" / "support.html").read_text()


def test_all_cells_passing_passes(tmp_path, capsys):
    write_cells(tmp_path / "results")
    rc, out, md, html = gate(tmp_path, capsys)
    assert rc == 0
    assert "Gate PASSED: lanes cpu; targets trl==0.29.1; required: all (10 cells)" in out
    assert "| 0.11.1 | ✅ 4 passed | ✅ 4 passed |" in md
    assert "| vllm-0.11.1(tf4) | cpu | trl==0.29.1 | 0.29.1 | 2.8.0 | 4.1.0 | Ubuntu 24.04 LTS (ci) | 21.5s | 33.2s | 300.0s |" in md
    assert html.count('<td class="pass"') == 10
    assert '<p class="verdict ok">' in html and "<style>" in html and "<script" not in html


def test_missing_cell_fails_and_names_it(tmp_path, capsys):
    write_cells(tmp_path / "results", skip={"vllm-0.12.0(tf5)"})
    rc, out, md, html = gate(tmp_path, capsys)
    assert rc == 1
    assert 'MISSING  vllm-0.12.0(tf5) cpu trl==0.29.1: no result (run: nox -s "vllm-0.12.0(tf5)")' in out
    assert "Gate FAILED (1 problem): lanes cpu" in out
    assert '| 0.12.0 | ✅ 4 passed | ❔ missing: `nox -s "vllm-0.12.0(tf5)"` |' in md
    assert '<td class="missing"><div class="status">missing</div><code>nox -s &quot;vllm-0.12.0(tf5)&quot;</code></td>' in html


def test_require_present_gates_only_cells_with_results(tmp_path, capsys):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "a.json").write_text(json.dumps(result("0.11.1", "4")))
    rc, out, _, _ = gate(tmp_path, capsys, "--require", "present")
    assert rc == 0 and "required: present (1 cells)" in out
    assert gate(tmp_path, capsys)[0] == 1  # --require all: the nine others are missing


def test_failed_cell_fails_and_links_its_failures(tmp_path, capsys):
    tests = PASSING[:2] + [
        {"nodeid": "tests/compat/test_generation.py::test_greedy[server]", "outcome": "failed", "duration": 1.0,
         "longrepr": "E   assert ['a'] == ['b'] <tokens>"},
        {"nodeid": "tests/compat/test_patches.py::test_patch", "outcome": "skipped", "duration": 0.0, "reason": "no engine"},
    ]
    write_cells(tmp_path / "results", overrides={"vllm-0.11.1(tf4)": result("0.11.1", "4", tests=tests)})
    rc, out, md, html = gate(tmp_path, capsys)
    assert rc == 1
    assert ("FAILED   vllm-0.11.1(tf4) cpu trl==0.29.1: 2 passed, 1 failed, 1 skipped (host): "
            "tests/compat/test_generation.py::test_greedy[server] (failed)") in out
    assert "| 0.11.1 | ❌ 2 passed, 1 failed, 1 skipped (host) | ✅ 4 passed |" in md
    # failures grouped by cause: the exception line, the cells and tests under it
    assert "- **assert ['a'] == ['b'] <tokens>** (1)" in md
    assert "  - vllm-0.11.1(tf4) cpu trl==0.29.1: `tests/compat/test_generation.py::test_greedy[server]`" in md
    anchor = "cell-vllm-0.11.1-tf4-cpu-trl-0.29.1"
    assert (f'<td class="fail" title="vllm 0.11.1 | torch 2.8.0 | transformers 4.1.0 | trl 0.29.1"><div class="status">'
            f'fail</div><a href="#{anchor}">2 passed, 1 failed, 1 skipped (host)</a>') in html
    assert "ran 75% / masked by known failures 0% / skipped 25%" in html
    assert f'<section id="{anchor}"><h3>vllm-0.11.1(tf4) cpu trl==0.29.1</h3>' in html
    assert f'<div id="{anchor}-1"><p><code>tests/compat/test_generation.py::test_greedy[server]</code> failed</p>' in html
    assert "<pre>E   assert [&#x27;a&#x27;] == [&#x27;b&#x27;] &lt;tokens&gt;</pre>" in html


def test_strict_xpass_fails_and_says_upstream_fixed(tmp_path, capsys):
    tests = PASSING[:3] + [{"nodeid": "tests/compat/test_patches.py::test_patch", "outcome": "failed", "duration": 0.1,
                            "longrepr": "[XPASS(strict)] known failure: broken logprobs"}]
    write_cells(tmp_path / "results", overrides={"vllm-0.10.2(tf5)": result("0.10.2", "5", tests=tests)})
    rc, out, md, html = gate(tmp_path, capsys)
    assert rc == 1
    assert ("XPASS    vllm-0.10.2(tf5) cpu trl==0.29.1: tests/compat/test_patches.py::test_patch passed but is a strict known "
            "failure (known failure: broken logprobs) -- upstream fixed? record it in matrix/support.toml") in out
    assert "FAILED   vllm-0.10.2(tf5)" not in out  # the unexpected pass is reported once, as such
    assert "| 0.10.2 | ✅ 4 passed | 🟣 3 passed, 1 failed |" in md
    assert '<td class="xpass"' in html


def test_host_skips_are_unverified_lane_skips_green_and_incomplete_runs_fail(tmp_path, capsys):
    """A test skipped because the host could not run it was checked by nobody: the gate cannot pass on it (a user
    of that release could hit what it would have seen); a GPU-only test on the CPU lane is the other lane's."""
    host_skips = PASSING[:1] + [dict(t, outcome="skipped", reason="needs GLIBCXX_3.4.32", skip_kind="host")
                                for t in PASSING[1:]]
    lane_skips = PASSING[:2] + [dict(t, outcome="skipped", reason="cpu lane: needs 2 NVIDIA GPUs", skip_kind="lane")
                                for t in PASSING[2:3]] + [dict(PASSING[3], outcome="skipped", skip_kind="not-applicable",
                                                               reason="not applicable: no /tokenize")]
    unverified = PASSING[:3] + [dict(PASSING[3], outcome="skipped", reason="x", skip_kind="not-applicable",
                                     known_failure={"cause": "bug", "match": "m", "state": "unverified"})]
    write_cells(tmp_path / "results", overrides={
        "vllm-0.10.2(tf4)": result("0.10.2", "4", tests=host_skips),
        "vllm-0.11.0(tf4)": result("0.11.0", "4", tests=lane_skips),
        "vllm-0.11.1(tf4)": result("0.11.1", "4", tests=unverified),
        "vllm-0.12.0(tf4)": result("0.12.0", "4", tests=PASSING[:1], exit_status=2),
    })
    rc, out, md, html = gate(tmp_path, capsys)
    assert rc == 1
    assert "FAILED   vllm-0.12.0(tf4) cpu trl==0.29.1: run did not complete (exit status 2: interrupted)" in out
    assert ("UNVERIFIED vllm-0.10.2(tf4) cpu trl==0.29.1: 3 test(s) skipped because this host could not run them, "
            "so nothing checked them: needs GLIBCXX_3.4.32 -- run the cell on a host that can") in out
    assert not [line for line in out.splitlines() if "vllm-0.11.0(tf4)" in line or "vllm-0.11.1(tf4)" in line]
    assert "| 0.10.2 | ⛔ 1 passed, 3 skipped (host) | ✅ 4 passed |" in md
    assert "| 0.11.0 | ✅ 2 passed, 1 not on this lane, 1 not applicable | ✅ 4 passed |" in md
    assert "| 0.11.1 | ⚠️ 3 passed, 1 not applicable | ✅ 4 passed |" in md
    assert "1 known failure(s) unverified here" in html and "3 skipped for a host reason" in html
    assert "  - 1 unverified: bug" in md  # known failures per cell
    assert html.count('<td class="attention"') == 1 and html.count('<td class="unverified"') == 1
    assert html.count('<td class="fail"') == 1


def test_lanes_and_targets_select_the_required_cells(tmp_path, capsys):
    d = tmp_path / "results"
    d.mkdir()
    for cell in MATRIX.cells("cuda", "trl==0.28.0"):
        (d / f"cuda-{cell.session}.json").write_text(json.dumps(result(cell.vllm, cell.transformers, "cuda", "trl==0.28.0")))
    rc, out, md, _ = gate(tmp_path, capsys, "--lane", "cuda", "--target", "trl==0.28.0")
    assert rc == 0 and "required: all (10 cells)" in out
    assert "## cuda lane, trl==0.28.0" in md
    rc, out, _, _ = gate(tmp_path, capsys, "--lane", "all", "--target", "all")
    assert rc == 1 and "(60 cells)" in out
    assert 'MISSING  vllm-0.11.1(tf4) cuda trl==0.29.1: no result (run: VLLMCOMPAT_LANE=cuda nox -s "vllm-0.11.1(tf4)")' in out
    assert 'MISSING  vllm-0.11.1(tf4) cpu trl==0.29.0: no result (run: VLLMCOMPAT_TARGET=trl==0.29.0 nox -s "vllm-0.11.1(tf4)")' in out


def test_foreign_files_and_non_cells_are_not_gated(tmp_path, capsys):
    write_cells(tmp_path / "results")
    (tmp_path / "results" / "junk.json").write_text('{"not": "a result"}')
    (tmp_path / "results" / "x.json").write_text(json.dumps(result("0.9.0", "4", matrix_cell=False)))
    rc, out, md, _ = gate(tmp_path, capsys)
    assert rc == 0
    assert "note: ignored" in out and "junk.json: not a vllmcompat result" in out
    assert "x.json: not a matrix cell" in out and "| vllm-0.9.0(tf4) |" in md


# --- the JSON a real plugin run writes ---------------------------------------------------

CELL_CONFTEST = """
from pytest_vllmcompat.install import installed as cellinfo
cellinfo.installed = lambda name: {"vllm": "0.11.1", "transformers": "4.57.6", "trl": "0.29.1"}.get(name)
"""

CELL_TESTS = """
import pytest
from pytest_vllmcompat.plugin.state import record_startup

@pytest.fixture(scope="session")
def engine(request):
    record_startup(request.config, "colocate_engine", 12.5)

def test_ok(engine):
    pass

def test_broken():
    assert 1 == 2, "tokens differ"

def test_fixed():
    pass

def test_skipped():
    pytest.skip("no engine on this host")

@pytest.mark.xfail(reason="flaky upstream")
def test_xfail():
    assert False

@pytest.fixture
def boom():
    raise RuntimeError("setup exploded")

def test_error(boom):
    pass
"""


def run_cell(pytester, monkeypatch, *args):
    text = matrix.DEFAULT_PATH.read_text() + '\n[[known_failures]]\ntest = "test_cell.py::test_fixed"\ncause = "was broken"\nmatch = "x"\n'
    monkeypatch.setenv("VLLMCOMPAT_MATRIX", str(pytester.makefile(".toml", support=text)))
    pytester.makeconftest(CELL_CONFTEST)
    pytester.makepyfile(test_cell=CELL_TESTS)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--vllm-lane=cpu", *args)


def test_plugin_writes_the_cell_result(pytester, monkeypatch):
    result_dir = pytester.path / "results"
    run = run_cell(pytester, monkeypatch, "--vllm-results", str(result_dir))
    run.assert_outcomes(passed=1, failed=2, skipped=1, xfailed=1, errors=1)
    path = result_dir / "vllm-0.11.1-tf4-cpu-trl-0.29.1.json"
    run.stdout.fnmatch_lines([f"vllmcompat results: {path}"])
    data = json.loads(path.read_text())
    cell = data["cell"]
    assert (cell["session"], cell["vllm"], cell["transformers_line"], cell["transformers"]) == ("vllm-0.11.1(tf4)", "0.11.1", "4", "4.57.6")
    assert (cell["lane"], cell["target"], cell["backend_version"], cell["matrix_cell"]) == ("cpu", "trl==0.29.1", "0.29.1", True)
    assert set(cell["host"]) == {"name", "os", "glibcxx", "gpus", "engine", "torch_source"}
    assert cell["host"]["torch_source"] in (None, "cell")  # no torch here, or the cell's own
    assert data["exit_status"] == 1 and data["startup"] == {"colocate_engine": [12.5]}
    assert data["counts"] == {"passed": 1, "failed": 2, "skipped": 1, "xfailed": 1, "xpassed": 0, "error": 1}
    tests = {t["nodeid"].split("::")[1]: t for t in data["tests"]}
    assert tests["test_ok"]["outcome"] == "passed" and tests["test_ok"]["duration"] >= 0
    assert tests["test_broken"]["outcome"] == "failed" and "AssertionError: tokens differ" in tests["test_broken"]["longrepr"]
    assert tests["test_fixed"]["longrepr"] == "[XPASS(strict)] known failure: was broken"
    assert tests["test_skipped"] == {"nodeid": "test_cell.py::test_skipped", "outcome": "skipped", "duration": tests["test_skipped"]["duration"], "reason": "no engine on this host", "skip_kind": "host"}
    assert tests["test_xfail"]["reason"] == "flaky upstream"
    assert tests["test_error"]["outcome"] == "error" and "setup exploded" in tests["test_error"]["longrepr"]

    gate_run = pytester.run(sys.executable, "-m", "pytest_vllmcompat", "gate", "--results", str(result_dir), "--require", "present")
    assert gate_run.ret == 1
    gate_run.stdout.fnmatch_lines([
        "XPASS    vllm-0.11.1(tf4) cpu trl==0.29.1: test_cell.py::test_fixed passed but is a strict known failure*upstream fixed? record it in matrix/support.toml",
        "FAILED   vllm-0.11.1(tf4) cpu trl==0.29.1: 1 passed, 2 failed, 1 xfailed, 1 error, 1 skipped (host): test_cell.py::test_broken (failed), test_cell.py::test_error (error)",
    ])


def test_no_results_written_by_default_and_env_sets_the_dir(pytester, monkeypatch):
    run_cell(pytester, monkeypatch).assert_outcomes(passed=1, failed=2, skipped=1, xfailed=1, errors=1)
    assert not list(pytester.path.glob("**/*.json"))
    monkeypatch.setenv("VLLMCOMPAT_RESULTS", str(pytester.path / "env-results"))
    run_cell(pytester, monkeypatch)
    assert [p.name for p in (pytester.path / "env-results").iterdir()] == ["vllm-0.11.1-tf4-cpu-trl-0.29.1.json"]


def test_xdist_controller_writes_one_result_with_workers_reports(pytester, monkeypatch):
    pytest.importorskip("xdist")
    result_dir = pytester.path / "results"
    run_cell(pytester, monkeypatch, "-n", "2", "--vllm-results", str(result_dir)).assert_outcomes(
        passed=1, failed=2, skipped=1, xfailed=1, errors=1)
    [path] = result_dir.iterdir()
    data = json.loads(path.read_text())
    assert data["counts"] == {"passed": 1, "failed": 2, "skipped": 1, "xfailed": 1, "xpassed": 0, "error": 1}
    assert data["startup"] == {"colocate_engine": [12.5]}  # recorded in a worker, carried to the controller


def test_a_later_release_is_gated_on_its_own_declared_cells(tmp_path):
    """A target outside the seed matrix requires the cells of its declared range (install/target_range.py), with
    only the transformers lines each release accepts; the seed matrix's cells are not asked of it."""
    import dataclasses

    from pytest_vllmcompat.report import gate as gate_module
    from pytest_vllmcompat.report.verdict import load_results

    later = dataclasses.replace(MATRIX, vllm_versions=("0.22.0", "0.23.0"), cell_lines={"0.22.0": ("4", "5"),
                                                                                      "0.23.0": ("5",)})
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "a.json").write_text(json.dumps(result("0.22.0", "5", target="trl==1.16.0")))
    found, _ = load_results(tmp_path / "r")
    verdict = gate_module.evaluate(MATRIX, found, ["cpu"], ["trl==1.16.0"], "all", {"trl==1.16.0": later})
    assert verdict.required == [("0.22.0", "4", "cpu", "trl==1.16.0"), ("0.22.0", "5", "cpu", "trl==1.16.0"),
                                ("0.23.0", "5", "cpu", "trl==1.16.0")]
    assert [p.split(":")[0] for p in verdict.problems] == ["MISSING  vllm-0.22.0(tf4) cpu trl==1.16.0",
                                                          "MISSING  vllm-0.23.0(tf5) cpu trl==1.16.0"]


def test_a_recorded_cuda_result_is_shown_with_where_and_when_it_ran(tmp_path, capsys):
    """`record` keeps a cell's result from a run elsewhere (e.g. the CUDA lane on a lent GPU) in matrix/recorded/
    with where and when it ran; the gate reads that folder too, draws the CUDA group over its target's own cells
    (a transformers line the release does not accept is not a cell) and shows the provenance; the default CPU
    gate still passes, not asking for the recorded lane."""
    import dataclasses

    from pytest_vllmcompat.report import gate as gate_module
    from pytest_vllmcompat.report import render
    from pytest_vllmcompat.report.verdict import load_results

    run = tmp_path / "run.json"
    run.write_text(json.dumps(result("0.22.0", "5", lane="cuda", target="trl==1.16.0")))
    assert cli.main(["record", str(run), "--where", "lent NVIDIA H200", "--how", "nox -s x", "--into",
                     str(tmp_path / "recorded")]) == 0
    kept = tmp_path / "recorded" / "vllm-0.22.0-tf5-cuda-trl-1.16.0.json"
    assert json.loads(kept.read_text())["recorded"] == {"where": "lent NVIDIA H200",
                                                         "when": "2026-01-01T00:05:00+00:00", "how": "nox -s x"}
    partial = result("0.22.0", "5", lane="cuda", target="trl==1.16.0")
    partial["selection"] = {"partial": True, "why_partial": ["-k"]}
    run.write_text(json.dumps(partial))
    assert cli.main(["record", str(run), "--where", "x", "--into", str(tmp_path / "recorded")]) == 2
    assert "a partial run (-k) never stands for a cell" in capsys.readouterr().err

    later = dataclasses.replace(MATRIX, vllm_versions=("0.22.0",), cell_lines={"0.22.0": ("5",)})
    write_cells(tmp_path / "results")
    found, _ = load_results(tmp_path / "results")
    recorded, _ = load_results(tmp_path / "recorded")
    verdict = gate_module.evaluate(MATRIX, found + recorded, ["cpu"], [DEFAULT], "all",
                                   {matrix.target_label(DEFAULT): MATRIX, "trl==1.16.0": later})
    assert verdict.ok, verdict.problems
    assert ("cuda", "trl==1.16.0") in verdict.groups
    text = render.markdown(MATRIX, verdict, ["cpu"], [DEFAULT], "all")
    section = text.split("## cuda lane, trl==1.16.0")[1].split("##")[0]
    assert "| 0.22.0 | — | ✅ 4 passed (recorded on lent NVIDIA H200, 2026-01-01T00:05:00+00:00) |" in section
    # A recorded result is gated like any other once its lane and target are asked.
    asked = gate_module.evaluate(MATRIX, recorded, ["cuda"], ["trl==1.16.0"], "all", {"trl==1.16.0": later})
    assert asked.ok and asked.required == [("0.22.0", "5", "cuda", "trl==1.16.0")]
