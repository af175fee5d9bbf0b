"""Tests for the server executor, using a real tiny HTTP server process (no vLLM needed)."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
from proc_helpers import alive

from pytest_vllmcompat.errors import ServerStartupError
from pytest_vllmcompat.process import childenv
from pytest_vllmcompat.process.childenv import redact
from pytest_vllmcompat.process.executor import OWNER_VAR, TAG_VAR, ServerProcess
from pytest_vllmcompat.process.ports import free_port
from pytest_vllmcompat.process.sweep import sweep_leftovers

TINY = Path(__file__).with_name("tiny_http_server.py")


def wait_dead(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def tiny_argv(port, *extra):
    return [sys.executable, str(TINY), "--port", str(port), *extra]


def make(tmp_path, *extra, port=None, **kw) -> ServerProcess:
    port = port or free_port()
    return ServerProcess("tiny-server", tiny_argv(port, *extra), port=port,
                         health_url=f"http://127.0.0.1:{port}/health",
                         log_path=tmp_path / "logs" / "server.log", **kw)


def test_an_early_started_server_is_timed_to_its_readiness_not_to_its_claim(tmp_path):
    """The early start: nobody waits on the server for a while; its start-up is still when /health first answered."""
    server = make(tmp_path, "--delay-ready", "0.6", startup_timeout=20)
    server.start()
    try:
        server.time_readiness_in_background()
        time.sleep(3.0)  # the tests before the first server user
        server.wait_ready()
        assert 0.5 <= server.startup_seconds < 2.5, server.startup_seconds
    finally:
        server.stop()


def grandchild_pid(server: ServerProcess) -> int:
    match = re.search(r"child pid (\d+)", server.log_path.read_text())
    assert match, server.log_path.read_text()
    return int(match.group(1))


def test_ready_on_healthy_server(tmp_path):
    server = make(tmp_path, "--delay-ready", "0.6", startup_timeout=20)
    with server:
        assert server.alive
        assert requests.get(server.health_url, timeout=2).text == "ok"
        assert 0.5 <= server.startup_seconds < 5
        env = dict(line.split("=", 1) for line in open(f"/proc/{server.pid}/environ").read().split("\0") if "=" in line)
        assert env[OWNER_VAR] == str(os.getpid())
        assert env[TAG_VAR] == server.tag
        assert os.getpgid(server.pid) == server.pid  # own process group
        pid = server.pid
    assert not server.alive
    assert server.proc.returncode == -signal.SIGTERM
    assert not alive(pid)
    assert "503" in server.log_path.read_text()  # it was polled while warming up


def test_early_death_fails_fast(tmp_path):
    server = make(tmp_path, "--delay-ready", "60", "--exit-after", "0.8", "7", startup_timeout=60)
    t0 = time.monotonic()
    with pytest.raises(ServerStartupError) as info:
        server.__enter__()
    caught_at = time.time()
    elapsed = time.monotonic() - t0
    err = info.value
    assert elapsed < 3.0
    assert err.returncode == 7
    assert err.address_in_use is False
    msg = str(err)
    assert "tiny-server exited during startup" in msg
    assert "exit code: 7" in msg
    assert f"port:      {server.port}" in msg
    assert str(server.log_path) in msg
    assert str(TINY) in msg  # command line
    assert "exiting with code 7" in msg  # log tail
    died_at = float(re.search(r"exiting with code 7 at ([\d.]+)", msg).group(1))
    latency = caught_at - died_at
    print(f"\ndeath -> ServerStartupError latency: {latency:.3f} s (startup elapsed {elapsed:.2f} s)")
    assert latency < 1.0


def test_startup_timeout_reports_and_leaves_no_process(tmp_path):
    server = make(tmp_path, "--delay-ready", "60", "--spawn-child", startup_timeout=1.5)
    server.start()
    with pytest.raises(ServerStartupError) as info:
        server.wait_ready()  # called directly: wait_ready itself must clean up, not just __enter__
    err = info.value
    child = grandchild_pid(server)
    assert err.returncode is None
    assert 1.4 <= err.elapsed < 4.0
    msg = str(err)
    assert "did not become ready in time" in msg
    assert "exit code: still running (killed after the startup timeout of 1.5 s)" in msg
    assert str(server.log_path) in msg
    assert '"GET /health HTTP/1.1" 503' in err.log_tail
    assert server.proc.returncode == -signal.SIGTERM
    assert not alive(server.pid)
    assert not alive(child)


def test_stop_kills_whole_group_including_grandchild(tmp_path):
    with make(tmp_path, "--spawn-child", startup_timeout=20) as server:
        child = grandchild_pid(server)
        assert alive(child)
        assert os.getpgid(child) == server.pid
        t0 = time.monotonic()
        server.stop(grace=5)
        assert time.monotonic() - t0 < 2.0  # both die on SIGTERM, no need to wait out the grace
    assert server.proc.returncode == -signal.SIGTERM
    assert not alive(child)
    server.stop()  # idempotent


def test_grandchild_ignoring_sigterm_is_killed_after_leader_exits(tmp_path):
    with make(tmp_path, "--spawn-child", "--child-ignore-sigterm", startup_timeout=20) as server:
        child = grandchild_pid(server)
        t0 = time.monotonic()
        server.stop(grace=1.0)
        took = time.monotonic() - t0
    assert server.proc.returncode == -signal.SIGTERM  # the leader obeyed SIGTERM
    assert 1.0 <= took < 4.0  # but stop() waited for the grandchild, then SIGKILLed it
    assert not alive(child)


def test_sigterm_ignoring_server_gets_sigkilled_after_grace(tmp_path):
    with make(tmp_path, "--ignore-sigterm", startup_timeout=20) as server:
        t0 = time.monotonic()
        server.stop(grace=1.0)
        took = time.monotonic() - t0
    assert server.proc.returncode == -signal.SIGKILL
    assert 1.0 <= took < 4.0
    assert not alive(server.pid)


def test_stop_is_safe_when_process_already_died(tmp_path):
    server = make(tmp_path, "--exit-after", "0.2", "0")
    server.start()
    assert wait_dead(server.pid)
    server.stop(grace=1)
    server.stop(grace=1)
    assert server.proc.returncode == 0
    assert not server.alive


def test_address_in_use_is_reported(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        server = make(tmp_path, port=port, startup_timeout=20)
        with pytest.raises(ServerStartupError) as info:
            with server:
                pass
    err = info.value
    assert err.returncode == 1
    # The held socket accepts but never answers, so one health request (2 s timeout) may block.
    assert err.elapsed < 3.5
    assert err.address_in_use is True
    assert "address already in use" in str(err).lower()
    assert f"port {port} was taken by another process" in str(err)


SECRETS = {
    "HF_TOKEN": "hf_aaaaSECRETVALUE1111",
    "HUGGING_FACE_HUB_TOKEN": "hf_bbbbSECRETVALUE2222",
    "WANDB_API_KEY": "wandb-cccc3333",
    "DB_PASSWORD": "hunter2hunter2",
    "MY_CLIENT_SECRET_X": "sssh-4444",
}


def test_redact_function():
    env = {**SECRETS, "MODEL": "facebook/opt-125m", "SHORT_TOKEN": "1"}
    text = " ".join(SECRETS.values()) + " facebook/opt-125m 1"
    assert redact(text, env) == "*** *** *** *** *** facebook/opt-125m 1"


def test_secrets_redacted_in_log_tail_and_error(tmp_path):
    print_env = [a for name in [*SECRETS, "PLAIN_VAR"] for a in ("--print-env", name)]
    server = make(tmp_path, "--delay-ready", "60", "--exit-after", "0.3", "2",
                  "--label", SECRETS["HF_TOKEN"], *print_env,
                  env={**SECRETS, "PLAIN_VAR": "visible-value"}, startup_timeout=20)
    with pytest.raises(ServerStartupError) as info:
        server.__enter__()
    msg, tail = str(info.value), server.log_tail()
    raw = server.log_path.read_text()
    for name, value in SECRETS.items():
        assert f"{name}={value}" in raw  # the child did get the real value
        assert value not in msg and value not in tail
        assert f"{name}=***" in tail and f"{name}=***" in msg
    assert "--label '***'" in msg or "--label ***" in msg  # command line redacted too
    assert "PLAIN_VAR=visible-value" in tail


def test_log_tail_of_running_server_is_redacted(tmp_path):
    with make(tmp_path, "--print-env", "HF_TOKEN", env={"HF_TOKEN": SECRETS["HF_TOKEN"]}) as server:
        tail = server.log_tail(n=5)
    assert "HF_TOKEN=***" in tail
    assert SECRETS["HF_TOKEN"] not in tail
    assert len(tail.splitlines()) <= 5


def test_sweep_stops_orphans_of_dead_owner_only(tmp_path):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.skip("sweeps are global by design: under pytest-xdist another worker's pytester runs sweep at their "
                    "session start and can stop this test's orphan before it looks (seen twice); the self-test runs "
                    "serially")
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert not os.path.exists(f"/proc/{dead.pid}")

    def spawn(owner, log_name, *extra):
        env = {**os.environ, OWNER_VAR: str(owner), TAG_VAR: uuid.uuid4().hex}
        log = open(tmp_path / log_name, "wb")
        return subprocess.Popen(tiny_argv(free_port(), *extra), env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)

    orphan = spawn(dead.pid, "orphan.log", "--spawn-child")
    kept = spawn(os.getpid(), "kept.log")
    try:
        deadline = time.monotonic() + 60  # a bound, not a wait: returns as soon as the line is there
        while "child pid" not in (tmp_path / "orphan.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        child = int(re.search(r"child pid (\d+)", (tmp_path / "orphan.log").read_text()).group(1))

        swept = sweep_leftovers(grace=3)

        swept_pids = {int(re.match(r"pid (\d+)", s).group(1)) for s in swept}
        assert {orphan.pid, child} <= swept_pids
        assert kept.pid not in swept_pids
        assert any(s.startswith(f"pid {orphan.pid} ") and str(TINY) in s for s in swept)
        assert orphan.wait(timeout=5) == -signal.SIGTERM
        assert wait_dead(child)
        assert kept.poll() is None and alive(kept.pid)
    finally:
        for p in (orphan, kept):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def test_sweep_leaves_running_server_of_this_process(tmp_path):
    with make(tmp_path) as server:
        swept = sweep_leftovers(grace=1)
        assert not any(s.startswith(f"pid {server.pid} ") for s in swept)
        assert server.alive


def test_late_bind_port_is_below_the_ephemeral_range_free_and_never_repeats():
    """Servers and TCPStores bind their port long after it is chosen: below the kernel's ephemeral range no bind(0)
    or outgoing connection of another process can take it meanwhile."""
    from pytest_vllmcompat.process.ports import ephemeral_low, late_bind_port

    low = ephemeral_low()
    if low <= 12000:
        pytest.skip(f"this host's ephemeral range starts at {low}: late_bind_port falls back to free_port here")
    handed = [late_bind_port() for _ in range(30)]
    assert len(set(handed)) == len(handed), handed
    assert all(10000 <= port < low for port in handed), (low, handed)
    for port in handed:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))  # free when handed out


def test_free_port_never_repeats():
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(1024 <= p <= 65535 for p in ports)
    with socket.socket() as sock:  # and it is actually bindable
        sock.bind(("127.0.0.1", ports[-1]))


def test_fatal_log_line_fails_fast_while_the_process_lives_on(tmp_path):
    """Like `trl vllm-serve` whose engine worker died: the main process never exits nor answers /health/."""
    from pytest_vllmcompat.backend.serve import SERVE_FATAL_LOG_PATTERNS

    server = make(tmp_path, "--delay-ready", "600", "--say", "Process Process-1:", "--say", "Traceback (most recent call last):",
                  startup_timeout=60, fatal_log_patterns=SERVE_FATAL_LOG_PATTERNS)
    started = time.monotonic()
    with pytest.raises(ServerStartupError) as info:
        with server:
            pass
    assert time.monotonic() - started < 5
    msg = str(info.value)
    assert "tiny-server failed during startup" in msg
    assert "exit code: still running (stopped: its log shows a fatal error)" in msg
    assert "fatal:     Process Process-1:" in msg
    assert info.value.fatal == "Process Process-1:"
    assert not server.alive


def test_no_fatal_patterns_means_only_exit_or_timeout_fail(tmp_path):
    server = make(tmp_path, "--say", "Process Process-1:")
    with server:
        assert server.alive


def test_servers_get_the_session_start_environment_not_what_an_engine_left(tmp_path, monkeypatch):
    """An engine built in the test process rewrites os.environ (vLLM's external_launcher sets
    VLLM_ENABLE_V1_MULTIPROCESSING=0); a server started afterwards must run as a user's would."""
    monkeypatch.setattr(childenv, "_session_start", None)
    monkeypatch.setenv("VLLMCOMPAT_SELFTEST_VAR", "at session start")
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    childenv.record_session_start()
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # what building a colocate engine does
    monkeypatch.setenv("VLLMCOMPAT_SELFTEST_VAR", "changed later")
    with make(tmp_path, "--print-env", "VLLM_ENABLE_V1_MULTIPROCESSING", "--print-env", "VLLMCOMPAT_SELFTEST_VAR",
              "--print-env", "VLLMCOMPAT_SELFTEST_EXTRA", env={"VLLMCOMPAT_SELFTEST_EXTRA": "given"}) as server:
        log = server.log_path.read_text()
    assert "VLLM_ENABLE_V1_MULTIPROCESSING=<unset>" in log
    assert "VLLMCOMPAT_SELFTEST_VAR=at session start" in log
    assert "VLLMCOMPAT_SELFTEST_EXTRA=given" in log


SHOWLOCALS_TESTS = """
from pytest_vllmcompat.process.childenv import child_env
from pytest_vllmcompat.testing.probe import run_probe

def test_probe_fails():
    run_probe("raise SystemExit(3)")

def test_env_in_a_failing_frame():
    env = child_env({"PLAIN": "x"})
    assert len(env) < 0
"""


def test_showlocals_never_prints_a_secret(pytester, monkeypatch):
    """`pytest -l` prints every local of the failing frames; environments the harness builds hide secrets."""
    monkeypatch.setenv("HF_TOKEN", SECRETS["HF_TOKEN"])
    monkeypatch.setenv("WANDB_API_KEY", SECRETS["WANDB_API_KEY"])
    pytester.makepyfile(test_secrets=SHOWLOCALS_TESTS)
    result = pytester.runpytest_subprocess("-l", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    assert "probe_env  = {" in out and "env        = {" in out  # the frames' locals were printed
    assert "': '***'" in out
    leaks = [line for line in out.splitlines() if SECRETS["HF_TOKEN"] in line or SECRETS["WANDB_API_KEY"] in line]
    assert leaks == []


def test_child_environment_repr_hides_secrets_but_passes_them_on():
    env = childenv.child_env({"HF_TOKEN": SECRETS["HF_TOKEN"], "PLAIN": "shown"})
    assert SECRETS["HF_TOKEN"] not in repr(env) and "'PLAIN': 'shown'" in repr(env)
    out = subprocess.run([sys.executable, "-c", "import os; print(os.environ['HF_TOKEN'])"], env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == SECRETS["HF_TOKEN"]


def test_post_watching_fails_on_the_evidence_of_a_worker_stuck_exiting(tmp_path):
    """The worker raised, then blocks joining its child: post_watching sees it in waitpid, stops its child, and
    quotes the error it then prints, seconds after the request instead of at the timeout."""
    from pytest_vllmcompat.testing.http import ServerDied, post_watching

    port = free_port()
    server = ServerProcess("hanging-server", [sys.executable, str(Path(__file__).with_name("hanging_server.py")),
                                              str(port)], port=port, health_url=f"http://127.0.0.1:{port}/health",
                           log_path=tmp_path / "server.log", startup_timeout=30)
    with server:
        started = time.monotonic()
        with pytest.raises(ServerDied) as info:
            post_watching(server, "/generate/", timeout=120, json={})
        took = time.monotonic() - started
    assert took < 20
    assert "hanging-server died while serving POST /generate/ (no answer came) (its worker pid" in str(info.value)
    assert "ValueError: The decoder prompt (length 600) is longer than the maximum model length of 512." in str(info.value)


def test_a_server_that_died_while_serving_is_stopped_without_the_grace(tmp_path):
    """After post_watching saw it die, the server is marked `died`, and its stop sends SIGKILL after DEAD_GRACE, not
    after the 10 s grace: here its main process ignores SIGTERM, as trl vllm-serve's uvicorn waits for the hung
    request in its graceful shutdown."""
    from pytest_vllmcompat.process.executor import DEAD_GRACE
    from pytest_vllmcompat.testing.http import ServerDied, post_watching

    port = free_port()
    server = ServerProcess("hanging-server", [sys.executable, str(Path(__file__).with_name("hanging_server.py")),
                                              str(port), "--ignore-term"], port=port,
                           health_url=f"http://127.0.0.1:{port}/health", log_path=tmp_path / "server.log",
                           startup_timeout=30)
    with server:
        assert server.died is False
        with pytest.raises(ServerDied):
            post_watching(server, "/generate/", timeout=120, json={})
        assert server.died is True
        started = time.monotonic()
    took = time.monotonic() - started
    assert took < DEAD_GRACE + 3, f"stopping the dead server took {took:.1f} s"
    assert server.proc is not None and server.proc.returncode == -signal.SIGKILL
