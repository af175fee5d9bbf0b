"""Start a server process, wait until it is healthy, and always stop its whole process tree.

A small, stdlib-only take on mirakuru's HTTP executor, tuned for `trl vllm-serve`: fail fast when the server
dies during startup, report why (exit code + log tail), never leak processes (also when the owner is
SIGKILLed: a watchdog stops the group), and never print secrets from the environment.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import requests

from ..errors import ServerStartupError
from . import ports, procfs
from .childenv import child_env, redact

OWNER_VAR = "PYTEST_VLLMCOMPAT_OWNER"
TAG_VAR = "PYTEST_VLLMCOMPAT_TAG"
POLL_INTERVAL = 0.25  # seconds between readiness polls
REQUEST_TIMEOUT = 2.0  # per health request; bounds how late an early death is noticed
PORT_ATTEMPTS = 3  # a free port can be taken between late_bind_port() and the server's bind: retry with a new one

# The watchdog: reads its stdin (a pipe whose only writer is the owner) until EOF, which comes when the owner
# closes it (normal stop, after the group is gone) or dies in any way, SIGKILL included; then stops the group.
WATCHDOG = r"""
import os, signal, sys, time
pgid = int(sys.argv[1])
sys.stdin.buffer.read()
def gone():
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return True
    return False
for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
    if gone():
        break
    os.killpg(pgid, sig)
    deadline = time.monotonic() + wait
    while not gone() and time.monotonic() < deadline:
        time.sleep(0.05)
"""


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # group already gone


def wait_until(done: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    """Poll `done()` until it is truthy; True if that happened within `timeout`."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def start_watchdog(pgid: int) -> subprocess.Popen:
    """The watchdog of the process group `pgid` (WATCHDOG): it stops the group once this process closes the pipe
    or dies."""
    return subprocess.Popen([sys.executable, "-c", WATCHDOG, str(pgid)], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={"PATH": os.environ.get("PATH", "")})


def release_watchdog(watchdog: subprocess.Popen) -> None:
    """Let a watchdog exit without acting (call once its group is gone): EOF on its pipe, then reap it."""
    if watchdog.stdin is not None:
        watchdog.stdin.close()
    try:
        watchdog.wait(timeout=5)
    except subprocess.TimeoutExpired:
        watchdog.kill()
        watchdog.wait()


DEAD_GRACE = 1.0  # s between SIGTERM and SIGKILL for a server known to have died while serving


def stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group `proc` leads, SIGKILL it after `grace` seconds, and wait for every member
    (a grandchild may outlive the leader). The one process-group stop of the harness."""
    pgid = proc.pid  # start_new_session: the process leads its own group

    def busy() -> bool:
        return proc.poll() is None or bool(procfs.group_members(pgid))

    signal_group(pgid, signal.SIGTERM)
    if not wait_until(lambda: not busy(), grace):
        signal_group(pgid, signal.SIGKILL)
        wait_until(lambda: not busy(), 10.0)
    proc.wait(timeout=5)


class ServerProcess:
    """Run `argv` in its own process group, wait for `health_url` to answer 2xx, stop the whole group.

    `env` is added on top of the session-start environment (childenv.child_env) for the child.
    """

    def __init__(self, name: str, argv: Sequence[str], *, port: int, health_url: str,
                 log_path: str | os.PathLike, env: Mapping[str, str] | None = None,
                 startup_timeout: float = 300.0, cwd: str | os.PathLike | None = None,
                 fatal_log_patterns: Sequence[str] = ()):
        if not startup_timeout > 0:
            raise ValueError(f"{name}: startup_timeout must be positive, got {startup_timeout!r}")
        self.name, self.argv, self.port, self.health_url = name, [str(a) for a in argv], port, health_url
        self.log_path, self.startup_timeout, self.cwd = Path(log_path), startup_timeout, cwd
        # Log lines that mean the server will never become ready although its main process lives on
        # (e.g. `trl vllm-serve` whose engine worker died): fail at once instead of at the timeout.
        self.fatal_log = re.compile("|".join(f"(?:{p})" for p in fatal_log_patterns), re.MULTILINE) if fatal_log_patterns else None
        self.tag = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.env = child_env({**(env or {}), OWNER_VAR: str(os.getpid()), TAG_VAR: self.tag})
        # Python children buffer stdout when it is a file; a killed server would lose its last lines.
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc: subprocess.Popen | None = None
        self.watchdog: subprocess.Popen | None = None
        self.startup_seconds: float | None = None
        self._log: IO[bytes] | None = None
        self._started_at = 0.0
        self._stopped = False
        # Set when a request saw the server die (testing/http.py): its stop then skips the SIGTERM grace. A server
        # whose worker died still holds the hung request, and uvicorn's graceful shutdown waits for it until SIGKILL.
        self.died = False

    def __repr__(self) -> str:
        return f"<ServerProcess {self.name!r} port={self.port} pid={self.pid}>"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def base_url(self) -> str:
        """scheme://host:port of the health URL: where the server's API lives."""
        parts = urlsplit(self.health_url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.proc is not None:
            raise RuntimeError(f"{self.name} already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        self._started_at = time.monotonic()
        try:
            self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         env=self.env, cwd=self.cwd)
        except BaseException:  # e.g. executable not found
            self._log.close()
            raise
        self.watchdog = start_watchdog(self.proc.pid)

    def wait_ready(self) -> None:
        """Poll the health URL until 2xx; fail at once on exit or a fatal log line, else at the timeout.
        On failure the whole group is stopped before ServerStartupError is raised."""
        assert self.proc is not None, "start() first"
        deadline = self._started_at + self.startup_timeout
        with requests.Session() as http:
            http.trust_env = False  # a proxy from the environment must not intercept 127.0.0.1
            while True:
                if self.proc.poll() is not None:
                    raise self._fail()
                fatal = self._fatal_line()
                if fatal is not None:
                    raise self._fail(fatal)
                if self._healthy(http, max(0.1, min(REQUEST_TIMEOUT, deadline - time.monotonic()))):
                    if self.startup_seconds is None:  # else timed already (time_readiness_in_background)
                        self.startup_seconds = time.monotonic() - self._started_at
                    return
                if time.monotonic() >= deadline:
                    raise self._fail()
                time.sleep(POLL_INTERVAL)

    def _healthy(self, http: requests.Session, timeout: float) -> bool:
        """One health request: True on 2xx; False when not listening yet (or not answering in `timeout`)."""
        try:
            return 200 <= http.get(self.health_url, timeout=timeout).status_code < 300
        except requests.RequestException:
            return False

    def time_readiness_in_background(self) -> None:
        """For a server nobody waits on yet (the early start): poll its health URL in a daemon thread and keep
        when it first answered, so that `startup_seconds` is its start-up, not the time until a test claimed it.
        Quiet: failures are wait_ready's to report."""
        def poll() -> None:
            deadline = self._started_at + self.startup_timeout
            with requests.Session() as http:
                http.trust_env = False
                while self.startup_seconds is None and self.alive and not self._stopped and time.monotonic() < deadline:
                    if self._healthy(http, REQUEST_TIMEOUT):
                        self.startup_seconds = time.monotonic() - self._started_at
                        return
                    time.sleep(POLL_INTERVAL)
        threading.Thread(target=poll, name=f"readiness of {self.name}", daemon=True).start()

    def _fatal_line(self) -> str | None:
        if self.fatal_log is None:
            return None
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(max(0, self.log_path.stat().st_size - 256 * 1024))
                match = self.fatal_log.search(fh.read().decode(errors="replace"))
        except OSError:
            return None
        return match.group(0).strip() if match else None

    def _fail(self, fatal: str | None = None) -> ServerStartupError:
        """Build the error for an early exit, a fatal log line or a timeout, stopping whatever is left first."""
        assert self.proc is not None
        elapsed = time.monotonic() - self._started_at
        returncode = self.proc.poll()  # None: still running, i.e. timed out
        self.stop()  # kills grandchildren of a dead server too
        return ServerStartupError(name=self.name, command=redact(shlex.join(self.argv), self.env), port=self.port,
                                  returncode=returncode, elapsed=elapsed, log_path=str(self.log_path),
                                  log_tail=self.log_tail(), startup_timeout=self.startup_timeout,
                                  fatal=None if fatal is None else redact(fatal, self.env))

    def stop(self, grace: float = 10.0) -> None:
        """Stop the whole process group (stop_group), then the watchdog. Idempotent. A server that died while
        serving gets DEAD_GRACE instead of `grace`: nothing in it can finish cleanly."""
        if self.proc is None or self._stopped:
            return
        self._stopped = True
        try:
            stop_group(self.proc, min(grace, DEAD_GRACE) if self.died else grace)
        finally:
            if self._log:
                self._log.close()
            if self.watchdog is not None:  # the group is gone: EOF lets the watchdog exit without acting
                release_watchdog(self.watchdog)

    def log_tail(self, n: int = 100) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 256 * 1024))  # the tail is all we need
                data = f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return redact("\n".join(data.splitlines()[-n:]), self.env)

    def __enter__(self) -> ServerProcess:
        self.start()
        try:
            self.wait_ready()
        except BaseException:  # includes KeyboardInterrupt: never leave the server behind
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_on_free_port(make: Callable[[int], ServerProcess], *, host: str = "127.0.0.1",
                       attempts: int = PORT_ATTEMPTS, first: ServerProcess | None = None,
                       discard: Callable[[ServerProcess], None] = lambda server: None) -> ServerProcess:
    """Start `make(port)` on a free port and wait until it is ready; when it died with "address already in use"
    (the port was taken between choice and bind), `discard` it and try a new port. `first`: a server already
    start()ed elsewhere (the plugin's early start), used as the first attempt."""
    for attempt in range(1, attempts + 1):
        server = first if attempt == 1 and first is not None else make(ports.late_bind_port(host))
        try:
            if server.proc is None:
                server.start()
            server.wait_ready()  # stops the server itself on a startup failure
        except ServerStartupError as exc:
            if not exc.address_in_use or attempt == attempts:
                raise
            discard(server)
            continue
        except BaseException:  # KeyboardInterrupt (also what SIGTERM to pytest becomes): never leave it behind
            server.stop()
            raise
        return server
    raise AssertionError("unreachable")
