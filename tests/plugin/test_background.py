"""BackgroundChild (pytest_vllmcompat/process/background.py) with real child processes, and the plugin's early
start of background work at the first test of its group (pytester)."""

import os
import signal
import sys
import time

import pytest
from proc_helpers import alive

from pytest_vllmcompat.process.background import BackgroundChild


def child(tmp_path, code: str, timeout: float = 30.0) -> BackgroundChild:
    return BackgroundChild("probe", [sys.executable, "-c", code], out_dir=tmp_path, env=dict(os.environ),
                           timeout=timeout)


def test_it_runs_while_the_caller_goes_on_and_wait_returns_its_exit_output_and_time(tmp_path):
    marker = tmp_path / "started"
    proc = child(tmp_path, f"import sys, time, pathlib; pathlib.Path({str(marker)!r}).touch(); time.sleep(1.0); "
                           "print('out line'); print('err line', file=sys.stderr); sys.exit(3)")
    began = time.monotonic()
    proc.start()
    assert time.monotonic() - began < 0.5, "start() waited for the child"
    deadline = time.monotonic() + 10
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the child did not run in the background"
    done = proc.wait()
    assert (done.returncode, done.stdout, done.stderr, done.timed_out) == (3, "out line\n", "err line\n", False)
    assert 1.0 <= done.seconds < 10, done.seconds
    assert proc.wait() is done  # idempotent


def test_a_child_that_ended_before_the_wait_is_timed_to_its_end_not_to_the_wait(tmp_path):
    proc = child(tmp_path, "print('done')")
    proc.start()
    deadline = time.monotonic() + 20
    while proc.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(2.0)  # the caller is busy elsewhere
    done = proc.wait()
    assert done.stdout == "done\n" and 0 <= done.seconds < 1.9, done.seconds


def test_a_child_past_its_timeout_is_stopped_with_its_whole_group(tmp_path):
    pids = tmp_path / "pids"
    code = ("import subprocess, sys, time, pathlib; "
            "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            f"pathlib.Path({str(pids)!r}).write_text(str(g.pid)); time.sleep(60)")
    proc = child(tmp_path, code, timeout=2.0)
    proc.start()
    done = proc.wait()
    assert done.timed_out and done.returncode is None
    assert 2.0 <= done.seconds < 20, done.seconds
    grandchild = int(pids.read_text())
    assert not alive(grandchild) and not alive(proc.proc.pid)


def test_stop_before_the_end_leaves_nothing(tmp_path):
    proc = child(tmp_path, "import time; time.sleep(60)")
    proc.start()
    proc.stop()
    assert proc.proc.poll() is not None and proc.proc.returncode == -signal.SIGTERM
    proc.stop()  # idempotent


def test_wait_before_start_is_refused(tmp_path):
    with pytest.raises(RuntimeError, match="start\\(\\) first"):
        child(tmp_path, "pass").wait()


EARLY_START = """
import time
import pytest

EVENTS = []

@pytest.fixture(scope="session")
def slow_work():
    EVENTS.append("work started")
    return "result"

def test_a_no_engine():
    EVENTS.append("a")

@pytest.mark.vllm_mode("server")
@pytest.mark.vllm_background("slow_work")
def test_b_waits_on_it(slow_work):
    EVENTS.append("b")
    assert slow_work == "result"

@pytest.mark.engine
def test_c_engine():
    EVENTS.append("c")

@pytest.mark.engine
def test_d_engine():
    EVENTS.append("d")

def test_z_order():
    pass
"""
# the conftest that prints the order in which EARLY_START's tests and its work ran
PRINT_EVENTS = """
def pytest_sessionfinish(session):
    import test_early
    print("EVENTS", test_early.EVENTS)
"""


def test_background_work_starts_at_the_first_engine_test_and_its_tests_run_after_the_engine_tests(pytester, monkeypatch):
    monkeypatch.setenv("VLLMCOMPAT_PRESTART", "0")  # no server here: only the order is looked at
    pytester.makepyfile(test_early=EARLY_START)
    pytester.makeconftest(PRINT_EVENTS)
    result = pytester.runpytest_subprocess("-v", "-s", "-p", "no:cacheprovider", "--vllm-mode=all")
    result.assert_outcomes(passed=5)
    ran = [line.split("::")[1].split(" ")[0] for line in result.outlines if "::test_" in line and "PASSED" in line]
    assert ran == ["test_a_no_engine", "test_z_order", "test_c_engine", "test_d_engine", "test_b_waits_on_it"], ran
    assert "EVENTS ['a', 'work started', 'c', 'd', 'b']" in result.stdout.str()  # started before the engine tests


def test_background_work_that_fails_fails_its_tests_not_the_engine_test_it_started_in(pytester, monkeypatch):
    monkeypatch.setenv("VLLMCOMPAT_PRESTART", "0")
    pytester.makepyfile(test_early=EARLY_START.replace('    EVENTS.append("work started")\n',
                                                       '    raise RuntimeError("the work could not start")\n'))
    result = pytester.runpytest_subprocess("-v", "-p", "no:cacheprovider", "--vllm-mode=all")
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines(["*test_b_waits_on_it ERROR*", "*RuntimeError: the work could not start*"])


def test_a_background_marker_naming_no_visible_fixture_is_an_error_at_the_first_engine_test(pytester, monkeypatch):
    monkeypatch.setenv("VLLMCOMPAT_PRESTART", "0")
    pytester.makepyfile(test_early=EARLY_START.replace('vllm_background("slow_work")', 'vllm_background("no_such")'))
    result = pytester.runpytest_subprocess("-v", "-p", "no:cacheprovider", "--vllm-mode=all")
    result.stdout.fnmatch_lines(["*test_c_engine ERROR*", "*fixture 'no_such' not found*"])


def test_background_work_whose_tests_are_deselected_with_k_is_not_started(pytester, monkeypatch):
    """-k deselects after the plugin orders the tests: the work is chosen from the final selection."""
    monkeypatch.setenv("VLLMCOMPAT_PRESTART", "0")
    pytester.makepyfile(test_early=EARLY_START)
    pytester.makeconftest(PRINT_EVENTS)
    result = pytester.runpytest_subprocess("-v", "-s", "-p", "no:cacheprovider", "--vllm-mode=all",
                                           "-k", "not waits_on_it")
    result.assert_outcomes(passed=4, deselected=1)
    assert "EVENTS ['a', 'c', 'd']" in result.stdout.str()


BESIDE_THE_SERVER = EARLY_START.replace('vllm_background("slow_work")', 'vllm_background("slow_work", beside="server")') + """
@pytest.mark.vllm_mode("server")
def test_s_server_user():
    EVENTS.append("s")
"""


def test_background_work_beside_the_server_starts_at_the_servers_first_user(pytester, monkeypatch):
    monkeypatch.setenv("VLLMCOMPAT_PRESTART", "0")
    pytester.makepyfile(test_early=BESIDE_THE_SERVER)
    pytester.makeconftest(PRINT_EVENTS)
    result = pytester.runpytest_subprocess("-v", "-s", "-p", "no:cacheprovider", "--vllm-mode=all")
    result.assert_outcomes(passed=6)
    assert "EVENTS ['a', 'work started', 's', 'c', 'd', 'b']" in result.stdout.str()


def test_background_work_beside_the_server_without_server_users_starts_at_the_first_engine_test(pytester,
                                                                                                  monkeypatch):
    monkeypatch.setenv("VLLMCOMPAT_PRESTART", "0")
    pytester.makepyfile(test_early=BESIDE_THE_SERVER)
    pytester.makeconftest(PRINT_EVENTS)
    result = pytester.runpytest_subprocess("-v", "-s", "-p", "no:cacheprovider", "--vllm-mode=all",
                                           "-k", "not server_user")
    result.assert_outcomes(passed=5, deselected=1)
    assert "EVENTS ['a', 'work started', 'c', 'd', 'b']" in result.stdout.str()


def test_an_unknown_beside_is_a_usage_error_that_lists_the_valid_ones(pytester, monkeypatch):
    monkeypatch.setenv("VLLMCOMPAT_PRESTART", "0")
    pytester.makepyfile(test_early=EARLY_START.replace('vllm_background("slow_work")',
                                                       'vllm_background("slow_work", beside="gpu")'))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--vllm-mode=all")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*vllm_background(beside='gpu'): not one of 'engine', 'server'*"])
