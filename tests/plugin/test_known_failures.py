"""Known failures forgive only their cause (`match`), and partial runs never stand for a cell (pytester runs)."""

import json
import sys

from pytest_vllmcompat import matrix

CELL_CONFTEST = """
from pytest_vllmcompat.install import installed as cellinfo
cellinfo.installed = lambda name: {"vllm": "0.11.1", "transformers": "4.57.6", "trl": "0.29.1"}.get(name)
"""

KF_TESTS = """
import pytest

def test_matching():
    raise ValueError("logits must be of type float32")

def test_other_error():
    raise KeyError("something else entirely")

def test_fixed():
    pass

def test_skipped_here():
    pytest.skip("this host cannot load the build")

@pytest.fixture
def engine():
    raise RuntimeError("Engine core initialization failed: NameError: name 'MoeModelOutputWithPast' is not defined")

def test_setup_fails_with_the_cause(engine):
    pass

@pytest.mark.engine
def test_marked():
    raise ValueError("marked failure")

def test_unmarked():
    raise ValueError("marked failure")

def test_chained():
    try:
        raise OSError("root cause: No module named 'vllm_ascend'")
    except OSError as exc:
        raise RuntimeError("wrapper") from exc
"""

ENTRIES = [
    ("test_kf.py::test_matching", "bf16 logits", "ValueError: logits must be of type float32", ""),
    ("test_kf.py::test_other_error", "bf16 logits", "ValueError: logits must be of type float32", ""),
    ("test_kf.py::test_fixed", "was broken", "anything", ""),
    ("test_kf.py::test_skipped_here", "cannot verify", "anything", ""),
    ("test_kf.py::test_setup_fails_with_the_cause", "IPEX", "MoeModelOutputWithPast", ""),
    ("test_kf.py::test_*marked", "needs an engine", "marked failure", "engine"),
    ("test_kf.py::test_chained", "vllm_ascend", "No module named 'vllm_ascend'", ""),
]


def run(pytester, monkeypatch, *args):
    text = matrix.DEFAULT_PATH.read_text()
    for test, cause, match, marker in ENTRIES:
        text += (f'\n[[known_failures]]\ntest = "{test}"\ncause = "{cause}"\nmatch = {json.dumps(match)}\n'
                 + (f'marker = "{marker}"\n' if marker else ""))
    monkeypatch.setenv("VLLMCOMPAT_MATRIX", str(pytester.makefile(".toml", support=text)))
    pytester.makeconftest(CELL_CONFTEST)
    pytester.makepyfile(test_kf=KF_TESTS)
    return pytester.runpytest_subprocess("-rfxXs", "-p", "no:cacheprovider", "--vllm-lane=cpu", *args)


def test_known_failures_forgive_only_their_cause(pytester, monkeypatch):
    results = pytester.path / "results"
    result = run(pytester, monkeypatch, "--vllm-results", str(results))
    # xfailed: matching, setup with the cause, the marked one, the chained cause; failed: other error, fixed
    # (XPASS strict), unmarked (the entry needs the marker); skipped: the unverified one.
    result.assert_outcomes(xfailed=4, failed=3, skipped=1)
    out = result.stdout.str()
    result.stdout.fnmatch_lines(["*XPASS(strict)*known failure: was broken*",
                                 "*XFAIL*test_matching*known failure: bf16 logits*"], consecutive=False)
    # The mismatch quotes the declared cause, its pattern and the actual error.
    assert "failed, but not with its declared known failure" in out
    assert "declared cause: bf16 logits" in out
    assert "its pattern:    ValueError: logits must be of type float32" in out
    assert "actual error:   KeyError: 'something else entirely'" in out
    assert "test_unmarked - ValueError: marked failure" in out  # no known failure applies without the marker
    assert "1 known failure(s) unverified here (the test skipped): test_kf.py::test_skipped_here" in out

    data = json.loads(next(results.glob("*.json")).read_text())
    tests = {t["nodeid"].split("::")[1]: t for t in data["tests"]}
    states = {name: t.get("known_failure", {}).get("state") for name, t in tests.items()}
    assert states == {"test_matching": "confirmed", "test_other_error": "mismatch", "test_fixed": "xpass",
                      "test_skipped_here": "unverified", "test_setup_fails_with_the_cause": "confirmed",
                      "test_marked": "confirmed", "test_unmarked": None, "test_chained": "confirmed"}
    assert tests["test_skipped_here"]["skip_kind"] == "host"

    gate = pytester.run(sys.executable, "-m", "pytest_vllmcompat", "gate", "--results", str(results),
                        "--require", "present")
    assert gate.ret == 1
    gate.stdout.fnmatch_lines(["MISMATCH vllm-0.11.1(tf4) cpu trl==0.29.1: test_kf.py::test_other_error failed, but "
                               "not with its declared known failure (bf16 logits; pattern: *)"], consecutive=False)


def test_runxfail_shows_the_real_outcomes(pytester, monkeypatch):
    run(pytester, monkeypatch, "--runxfail").assert_outcomes(passed=1, failed=5, errors=1, skipped=1)


PARTIAL_TESTS = """
def test_a():
    pass

def test_b():
    pass
"""


def test_a_partial_run_never_replaces_or_passes_for_the_cell(pytester, monkeypatch):
    monkeypatch.delenv("VLLMCOMPAT_RESULTS", raising=False)
    pytester.makeconftest(CELL_CONFTEST)
    pytester.makepyfile(test_cell=PARTIAL_TESTS)
    results = pytester.path / "results"
    base = ["-p", "no:cacheprovider", "--vllm-lane=cpu", "--vllm-results", str(results)]
    pytester.runpytest_subprocess(*base, "-k", "test_a").assert_outcomes(passed=1)
    partial = results / "vllm-0.11.1-tf4-cpu-trl-0.29.1.partial.json"
    assert [p.name for p in results.iterdir()] == [partial.name]
    assert json.loads(partial.read_text())["selection"]["why_partial"] == ["-k test_a"]

    def gate():
        return pytester.run(sys.executable, "-m", "pytest_vllmcompat", "gate", "--results", str(results),
                            "--require", "present")

    alone = gate()
    assert alone.ret == 1
    alone.stdout.fnmatch_lines(["PARTIAL  vllm-0.11.1(tf4) cpu trl==0.29.1: only a partial run (-k test_a), which "
                                "never counts as the cell*"])

    pytester.runpytest_subprocess(*base).assert_outcomes(passed=2)
    complete = results / "vllm-0.11.1-tf4-cpu-trl-0.29.1.json"
    pytester.runpytest_subprocess(*base, "--vllm-mode=server", "test_cell.py::test_b").assert_outcomes(passed=1)
    assert json.loads(complete.read_text())["counts"]["passed"] == 2  # the full result is still there
    why = json.loads(partial.read_text())["selection"]["why_partial"]
    assert why == ["--vllm-mode=server", "explicit tests: test_cell.py::test_b"]
    both = gate()
    assert both.ret == 0, both.stdout.str()
    both.stdout.fnmatch_lines(["Gate PASSED: *; 9 of 10 matrix cells have no complete result and were not gated"])


def test_collect_only_writes_no_result(pytester, monkeypatch):
    pytester.makeconftest(CELL_CONFTEST)
    pytester.makepyfile(test_cell=PARTIAL_TESTS)
    results = pytester.path / "results"
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "--co", "--vllm-lane=cpu", "--vllm-results", str(results))
    assert not results.exists()


def test_deprecations_on_the_backends_paths_are_recorded_and_shown(pytester, monkeypatch):
    pytester.makeconftest(CELL_CONFTEST)
    pkg = pytester.mkpydir("vllm")
    (pkg / "utils.py").write_text("import warnings\n\ndef get_open_port():\n"
                                  "    warnings.warn('vllm.utils.get_open_port is deprecated', DeprecationWarning, stacklevel=1)\n"
                                  "    return 1\n")
    pytester.makepyfile(test_dep="import warnings\nfrom vllm.utils import get_open_port\n\n"
                                 "def test_uses_alias():\n    assert get_open_port() == 1\n\n"
                                 "def test_own_warning():\n    warnings.warn('not the backend', DeprecationWarning)\n")
    results = pytester.path / "results"
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "--vllm-lane=cpu", "--vllm-results",
                                  str(results)).assert_outcomes(passed=2)
    [path] = results.iterdir()
    assert json.loads(path.read_text())["deprecations"] == [{
        "category": "DeprecationWarning", "message": "vllm.utils.get_open_port is deprecated",
        "where": "vllm (utils.py:4)", "tests": ["test_dep.py::test_uses_alias"]}]
    gate = pytester.run(sys.executable, "-m", "pytest_vllmcompat", "gate", "--results", str(results), "--require",
                        "present", "--out", str(pytester.path / "out"))
    assert gate.ret == 0  # deprecations do not fail a cell
    md = (pytester.path / "out" / "support.md").read_text()
    assert "  - DeprecationWarning in vllm (utils.py:4): vllm.utils.get_open_port is deprecated (1 test(s))" in md


def test_lane_substitutions_and_measurements_reach_the_report_results_and_gate(pytester, monkeypatch):
    pytester.makeconftest(CELL_CONFTEST)
    pytester.makepyfile(test_sub="def test_replaced(vllm_lane_substitute, vllm_measure):\n"
                                 "    vllm_lane_substitute('server weight sync not exercised on the cpu lane')\n"
                                 "    vllm_lane_substitute('server weight sync not exercised on the cpu lane')\n"
                                 "    vllm_measure('max_abs_logprob_diff', 0.03)\n\n"
                                 "def test_plain():\n    pass\n")
    results = pytester.path / "results"
    run = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", "--vllm-lane=cpu", "--vllm-results",
                                        str(results))
    run.assert_outcomes(passed=2)
    run.stdout.fnmatch_lines(["*substituted on this lane: server weight sync not exercised on the cpu lane*",
                              "vllmcompat: server weight sync not exercised on the cpu lane (1 test(s) replaced*"])
    [path] = results.iterdir()
    data = json.loads(path.read_text())
    tests = {t["nodeid"]: t for t in data["tests"]}
    assert tests["test_sub.py::test_replaced"]["substituted"] == ["server weight sync not exercised on the cpu lane"]
    assert tests["test_sub.py::test_replaced"]["measured"] == {"max_abs_logprob_diff": 0.03}
    assert "substituted" not in tests["test_sub.py::test_plain"]
    assert data["substitutions"] == [{"what": "server weight sync not exercised on the cpu lane",
                                      "tests": ["test_sub.py::test_replaced"]}]
    gate = pytester.run(sys.executable, "-m", "pytest_vllmcompat", "gate", "--results", str(results), "--require",
                        "present", "--out", str(pytester.path / "out"))
    assert gate.ret == 0
    md = (pytester.path / "out" / "support.md").read_text()
    assert "server weight sync not exercised on the cpu lane (1 test(s))" in md
    assert "server weight sync not exercised on the cpu lane" in (pytester.path / "out" / "support.html").read_text()


def test_an_interrupted_run_is_partial(pytester, monkeypatch):
    """Ctrl-C or SIGTERM (pytest: KeyboardInterrupt, exit 2): the tests after it never ran, so the result must not
    stand for the cell (seen: a cell stopped with SIGTERM wrote its complete result name)."""
    monkeypatch.delenv("VLLMCOMPAT_RESULTS", raising=False)
    pytester.makeconftest(CELL_CONFTEST)
    pytester.makepyfile(test_cell="def test_a():\n    pass\n\ndef test_b():\n    raise KeyboardInterrupt\n\n"
                                  "def test_c():\n    pass\n")
    results = pytester.path / "results"
    run = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--vllm-lane=cpu", "--vllm-results", str(results))
    assert run.ret == 2
    [path] = results.iterdir()
    assert path.name == "vllm-0.11.1-tf4-cpu-trl-0.29.1.partial.json"
    assert json.loads(path.read_text())["selection"]["why_partial"] == ["interrupted"]
