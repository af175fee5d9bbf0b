"""pytest-level process scenarios: real inner pytest runs (some under xdist) whose session fixture starts
`tiny_http_server.py` through the `vllm_server_factory` fixture, the code path of the real `vllm_server` fixture.

Each inner run gets a unique SCENARIO_MARK in its environment, inherited by its workers, servers and their
children; after each scenario no process carrying it may remain. Timings are printed (run with -s to see them).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from proc_helpers import alive

from pytest_vllmcompat.process import executor

TINY = Path(__file__).with_name("tiny_http_server.py")
SECRET = "hf_scenarioSECRET0123456789"

CONFTEST = f"""
import json, os, sys
import pytest

@pytest.fixture(scope="session")
def tiny_server(vllm_server_factory):
    extra = os.environ.get("SCENARIO_SERVER_ARGS", "").split()

    def argv(host, port):
        return [sys.executable, {str(TINY)!r}, "--port", str(port), *extra]

    with vllm_server_factory.start("tiny-server", argv, health_path="/health",
                                   startup_timeout=float(os.environ.get("SCENARIO_STARTUP_TIMEOUT", "30"))) as server:
        yield server

def _note(**facts):
    with open(os.environ["SCENARIO_NOTES"], "a") as f:
        f.write(json.dumps(facts) + "\\n")

@pytest.fixture
def note():
    return _note

def pytest_runtest_logreport(report):
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # the main process sees every report, workers' too
        _note(kind="report", nodeid=report.nodeid, when=report.when, outcome=report.outcome,
              sections=[list(s) for s in report.sections], longrepr=str(report.longrepr) if report.failed else "")
"""

SERVER_TESTS = """
import os, time
import requests

def environ(pid):
    raw = open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace")
    return dict(e.split("=", 1) for e in raw.split("\\0") if "=" in e)

def test_needs_server(tiny_server):
    pass

def test_fails_with_server(tiny_server):
    assert False, "deliberate failure"

def test_long_running(tiny_server, note):
    note(kind="running", pid=os.getpid(), server_pid=tiny_server.pid,
         owner=environ(tiny_server.pid)["PYTEST_VLLMCOMPAT_OWNER"])
    time.sleep(120)

def test_server_is_mine(tiny_server, note):
    with requests.Session() as http:
        http.trust_env = False
        assert http.get(tiny_server.health_url, timeout=10).text == "ok"
    assert environ(tiny_server.pid)["PYTEST_VLLMCOMPAT_OWNER"] == str(os.getpid())
    note(kind="server", worker=os.environ.get("PYTEST_XDIST_WORKER"), pid=os.getpid(), port=tiny_server.port,
         server_pid=tiny_server.pid)
"""


def marked(mark: str) -> list[int]:
    """Live (non-zombie) processes whose environment carries SCENARIO_MARK=mark."""
    needle = f"SCENARIO_MARK={mark}".encode()
    found = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            if needle in Path(f"/proc/{p}/environ").read_bytes().split(b"\0"):
                stat = Path(f"/proc/{p}/stat").read_text()
                if stat[stat.rfind(")") + 2] not in "ZX":
                    found.append(int(p))
        except OSError:
            continue
    return found


def poll(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class Inner:
    """An inner `python -m pytest` in its own session, its output read line by line with arrival times."""

    def __init__(self, pytester: pytest.Pytester, name: str, *args: str, env: dict[str, str] | None = None):
        self.mark = uuid.uuid4().hex
        self.dir = pytester.path
        self.notes_path = self.dir / f"notes-{name}.jsonl"
        self.basetemp = self.dir / f"bt-{name}"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT"))}
        full_env.update({"SCENARIO_MARK": self.mark, "SCENARIO_NOTES": str(self.notes_path),
                         "PYTHONUNBUFFERED": "1", **(env or {})})
        self.lines: list[tuple[float, str]] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--basetemp", str(self.basetemp), *args],
            cwd=self.dir, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for raw in self.proc.stdout:
            self.lines.append((time.time(), raw.decode(errors="replace")))

    @property
    def output(self) -> str:
        return "".join(line for _, line in self.lines)

    def first_line_time(self, pattern: str) -> float | None:
        return next((t for t, line in list(self.lines) if re.search(pattern, line)), None)

    def notes(self, kind: str) -> list[dict]:
        try:
            text = self.notes_path.read_text()
        except FileNotFoundError:
            return []
        return [n for n in map(json.loads, text.splitlines()) if n["kind"] == kind]

    def wait(self, timeout: float = 60) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return rc

    def server_logs(self) -> list[Path]:
        return sorted(self.basetemp.glob("**/servers*/tiny-server-*.log"))

    def cleanup(self):
        """Last resort for a failed scenario: kill the inner run's group and anything carrying its mark."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for pid in marked(self.mark):
            try:
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture
def scenario(pytester: pytest.Pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_inner=SERVER_TESTS)
    runs: list[Inner] = []
    # Inner runs must take SIGINT as from a terminal. A background job of a non-interactive shell starts with
    # SIGINT ignored, inherited across exec, and Python then never raises KeyboardInterrupt; a caught signal is
    # reset to the default across exec, so catching it here gives the inner runs the default.
    previous_sigint = signal.signal(signal.SIGINT, signal.default_int_handler)

    def start(name, *args, **kw) -> Inner:
        runs.append(Inner(pytester, name, *args, **kw))
        return runs[-1]

    yield start
    signal.signal(signal.SIGINT, previous_sigint)
    leaks = {run.mark: marked(run.mark) for run in runs}
    for run in runs:
        run.cleanup()
    assert not any(leaks.values()), f"processes left behind: {leaks}"


def report(title: str, **facts):
    print(f"\n[scenario] {title}: " + ", ".join(f"{k}={v:.2f}s" if isinstance(v, float) else f"{k}={v}"
                                               for k, v in facts.items()))


def server_env(args: str, **extra) -> dict[str, str]:
    return {"SCENARIO_SERVER_ARGS": args, **extra}


def test_early_death_reaches_user_fast_with_log_tail_and_no_secret(scenario):
    run = scenario("early", "test_inner.py::test_needs_server",
                   env=server_env("--delay-ready 60 --exit-after 0.8 7 --print-env HF_TOKEN", HF_TOKEN=SECRET))
    assert run.wait() == 1
    out = run.output
    assert "tiny-server exited during startup" in out and "exit code: 7" in out, out
    died_at = float(re.search(r"exiting with code 7 at ([\d.]+)", out).group(1))
    latency = run.first_line_time("tiny-server exited during startup") - died_at
    setup = [r for r in run.notes("report") if r["when"] == "setup"][0]
    assert setup["outcome"] == "failed"
    assert "exit code: 7" in setup["longrepr"] and "exiting with code 7" in setup["longrepr"]
    titles = [title for title, _ in setup["sections"]]
    assert any(t.startswith("tiny-server log tail (") for t in titles), titles
    tail = dict(setup["sections"])[next(t for t in titles if t.startswith("tiny-server log tail"))]
    assert "exiting with code 7" in tail and "HF_TOKEN=***" in tail and "HF_TOKEN=***" in setup["longrepr"]
    assert SECRET not in out and SECRET not in run.notes_path.read_text()
    assert SECRET in run.server_logs()[0].read_text()  # the server did get the token
    assert not marked(run.mark)
    report("early death", death_to_error_printed=latency)
    assert latency < 3.0


def test_startup_timeout(scenario):
    run = scenario("timeout", "test_inner.py::test_needs_server",
                   env=server_env("--delay-ready 60 --spawn-child", SCENARIO_STARTUP_TIMEOUT="1.5"))
    t0 = time.time()
    assert run.wait() == 1
    out = run.output
    assert "tiny-server did not become ready in time" in out, out
    assert "exit code: still running (killed after the startup timeout of 1.5 s)" in out
    elapsed = float(re.search(r"elapsed:\s+([\d.]+) s", out).group(1))
    assert 1.4 <= elapsed < 5
    child = int(re.search(r"child pid (\d+)", run.server_logs()[0].read_text()).group(1))
    assert not alive(child)
    assert not marked(run.mark)
    report("startup timeout", timeout_to_error=elapsed - 1.5, inner_run=time.time() - t0)


def _interrupt_during_startup(scenario, sig):
    run = scenario(f"sig{sig}-startup", "test_inner.py::test_needs_server",
                   env=server_env("--delay-ready 60 --spawn-child", SCENARIO_STARTUP_TIMEOUT="60"))
    log = poll(lambda: [p for p in run.server_logs() if "child pid" in p.read_text()], 30, "server + grandchild")[0]
    child = int(re.search(r"child pid (\d+)", log.read_text()).group(1))
    assert len(marked(run.mark)) >= 3  # pytest, server, grandchild
    t_sig = time.monotonic()
    os.kill(run.proc.pid, sig)
    rc = run.wait(timeout=30)
    took = time.monotonic() - t_sig
    assert rc == 2, run.output  # interrupted
    assert "KeyboardInterrupt" in run.output
    assert not alive(child)
    assert not marked(run.mark)
    return took


def test_ctrl_c_during_startup(scenario):
    took = _interrupt_during_startup(scenario, signal.SIGINT)
    report("SIGINT during start-up", signal_to_pytest_exit_all_gone=took)
    assert took < 10


def test_sigterm_during_startup(scenario):
    took = _interrupt_during_startup(scenario, signal.SIGTERM)
    report("SIGTERM during start-up", signal_to_pytest_exit_all_gone=took)
    assert took < 10


def test_sigterm_while_test_runs(scenario):
    run = scenario("sigterm-running", "test_inner.py::test_long_running", env=server_env("--spawn-child"))
    running = poll(lambda: run.notes("running"), 30, "the test to run")[0]
    log = run.server_logs()[0]
    child = int(re.search(r"child pid (\d+)", log.read_text()).group(1))
    t_sig = time.monotonic()
    os.kill(run.proc.pid, signal.SIGTERM)
    rc = run.wait(timeout=30)
    took = time.monotonic() - t_sig
    assert rc == 2, run.output
    assert "pytest received signal 15" in run.output
    assert not alive(running["server_pid"]) and not alive(child)
    assert not marked(run.mark)
    report("SIGTERM while a test runs", signal_to_pytest_exit_all_gone=took)
    assert took < 10


def test_kill_9_of_xdist_worker_leaves_no_server(scenario):
    """The worker's servers die with it: their watchdog stops them (or, if it is slower, the controller's sweep)."""
    pytest.importorskip("xdist")
    run = scenario("kill9", "-n", "2", "test_inner.py::test_long_running", env=server_env("--spawn-child"))
    running = poll(lambda: run.notes("running"), 60, "the test to run on a worker")[0]
    worker, server_pid = running["pid"], running["server_pid"]
    assert running["owner"] == str(worker)  # the worker owns its server, not the controller
    child = int(re.search(r"child pid (\d+)", run.server_logs()[0].read_text()).group(1))
    t_kill = time.monotonic()
    os.kill(worker, signal.SIGKILL)
    poll(lambda: not alive(server_pid) and not alive(child), 30, "the crashed worker's server to be stopped")
    stopped_after = time.monotonic() - t_kill
    rc = run.wait(timeout=60)
    out = run.output
    assert rc == 1, out
    assert "crashed" in out
    assert not marked(run.mark)
    report("kill -9 of an xdist worker", kill_to_server_stopped=stopped_after)
    assert stopped_after < 15


def test_kill_9_of_pytest_itself_leaves_no_server(scenario):
    """SIGKILL of the pytest process that owns the server: no teardown runs, the watchdog stops the server's group."""
    run = scenario("kill9-main", "test_inner.py::test_long_running", env=server_env("--spawn-child"))
    running = poll(lambda: run.notes("running"), 30, "the test to run")[0]
    server_pid = running["server_pid"]
    child = int(re.search(r"child pid (\d+)", run.server_logs()[0].read_text()).group(1))
    t_kill = time.monotonic()
    os.kill(run.proc.pid, signal.SIGKILL)
    assert run.wait(timeout=10) == -signal.SIGKILL
    poll(lambda: not alive(server_pid) and not alive(child), 15, "the watchdog to stop the server group")
    stopped_after = time.monotonic() - t_kill
    assert not marked(run.mark)
    report("kill -9 of pytest", kill_to_server_group_stopped=stopped_after)
    assert stopped_after < 5


def test_two_concurrent_xdist_runs_each_worker_own_server(scenario):
    pytest.importorskip("xdist")
    args = ("-n", "2", "--dist", "each", "test_inner.py::test_server_is_mine")
    runs = [scenario(f"concurrent{i}", *args, env=server_env("--delay-ready 0.5")) for i in range(2)]
    t0 = time.monotonic()
    rcs = [run.wait(timeout=90) for run in runs]
    took = time.monotonic() - t0
    assert rcs == [0, 0], "\n".join(run.output for run in runs)
    servers = [n for run in runs for n in run.notes("server")]
    assert len(servers) == 4  # 2 runs x 2 workers, one test each (--dist each)
    assert len({s["port"] for s in servers}) == 4
    assert len({s["server_pid"] for s in servers}) == 4
    assert len({s["pid"] for s in servers}) == 4
    for run in runs:
        assert not marked(run.mark)
    report("two concurrent -n 2 runs", both_runs=took, ports=sorted(s["port"] for s in servers))


def test_secret_not_in_failing_test_report(scenario):
    run = scenario("secret", "test_inner.py::test_fails_with_server",
                   env=server_env("--print-env HF_TOKEN --label " + SECRET, HF_TOKEN=SECRET))
    assert run.wait() == 1
    call = [r for r in run.notes("report") if r["when"] == "call"][0]
    assert call["outcome"] == "failed"
    sections = dict(call["sections"])
    tail = next(v for k, v in sections.items() if k.startswith("tiny-server log tail ("))
    assert "HF_TOKEN=***" in tail
    assert "tiny-server log tail (" in run.output and "HF_TOKEN=***" in run.output
    assert SECRET not in run.output and SECRET not in run.notes_path.read_text()
    assert f"HF_TOKEN={SECRET}" in run.server_logs()[0].read_text()  # it did reach the server
    assert not marked(run.mark)


def test_start_on_free_port_retries_when_port_taken(tmp_path, monkeypatch):
    """The choose-then-bind race: the first port is taken by someone else; the executor retries on a new one."""
    from pytest_vllmcompat.process import ports

    discarded = []
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # bound, not listening: health checks are refused at once
        taken_port = taken.getsockname()[1]
        handed = iter([taken_port])
        real = ports.late_bind_port
        monkeypatch.setattr(ports, "late_bind_port", lambda host="127.0.0.1": next(handed, None) or real(host))

        def make(port):
            return executor.ServerProcess("tiny server", [sys.executable, str(TINY), "--port", str(port)], port=port,
                                          health_url=f"http://127.0.0.1:{port}/health",
                                          log_path=tmp_path / f"tiny-server-{port}.log", startup_timeout=20)

        server = executor.start_on_free_port(make, discard=discarded.append)
        try:
            assert server.port != taken_port and server.alive
            assert [s.port for s in discarded] == [taken_port]
            pid = server.pid
        finally:
            server.stop()
        assert not alive(pid)
    first_log = (tmp_path / f"tiny-server-{taken_port}.log").read_text()
    assert "address already in use" in first_log.lower()
