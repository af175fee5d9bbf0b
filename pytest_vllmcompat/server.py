"""Start a server process, wait until it is healthy, and always stop its whole process tree.

A small, stdlib-only take on mirakuru's HTTP executor, tuned for `trl vllm-serve`:
fail fast when the server dies during startup, report why (exit code + log tail),
never leak processes, and never print secrets from the environment.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
import uuid
from urllib.parse import urlsplit
from collections.abc import Mapping, Sequence
from pathlib import Path

import requests

from .childenv import child_env

OWNER_VAR = "PYTEST_VLLMCOMPAT_OWNER"
TAG_VAR = "PYTEST_VLLMCOMPAT_TAG"
POLL_INTERVAL = 0.25  # seconds between readiness polls
REQUEST_TIMEOUT = 2.0  # per health request; bounds how late an early death is noticed

_SECRET_NAME = re.compile(r"(_TOKEN|_KEY)$|SECRET|PASSWORD|^HF_TOKEN$|^HUGGING_FACE_HUB_TOKEN$", re.I)
_ADDR_IN_USE = re.compile(r"address already in use|errno 98\b", re.I)


def redact(text: str, env: Mapping[str, str]) -> str:
    """Replace the value of every secret-looking variable in `env` with `***`."""
    # Very short values are skipped: redacting e.g. "1" would mangle the whole text.
    secrets = {v for k, v in env.items() if _SECRET_NAME.search(k) and len(v) >= 4}
    for value in sorted(secrets, key=len, reverse=True):  # longest first: overlapping values
        text = text.replace(value, "***")
    return text


class ServerStartupError(RuntimeError):
    def __init__(self, *, name, command, port, returncode, elapsed, log_path, log_tail, env, fatal=None):
        self.name, self.port, self.returncode, self.fatal = name, port, returncode, fatal
        self.elapsed, self.log_path, self.log_tail = elapsed, str(log_path), log_tail
        self.address_in_use = returncode is not None and bool(_ADDR_IN_USE.search(log_tail))
        if fatal is not None:
            status = "still running (stopped: its log shows a fatal error)" if returncode is None else str(returncode)
            what = "failed during startup"
        else:
            status = "still running (killed after startup timeout)" if returncode is None else str(returncode)
            what = "did not become ready in time" if returncode is None else "exited during startup"
        lines = [
            f"{name} {what}",
            f"  command:   {redact(command, env)}",
            f"  port:      {port}",
            f"  exit code: {status}",
            f"  elapsed:   {elapsed:.2f} s",
            f"  log file:  {log_path}",
        ]
        if fatal is not None:
            lines.append(f"  fatal:     {redact(fatal, env)}")
        if self.address_in_use:
            lines.append(f"  cause:     port {port} was taken by another process after it was picked "
                         "(address already in use); retry with a new free_port()")
        lines += [f"--- last {len(log_tail.splitlines())} log lines ---", log_tail.rstrip("\n")]
        super().__init__("\n".join(lines))


class ServerProcess:
    """Run `argv` in its own process group, wait for `health_url` to answer 2xx, stop the whole group.

    `env` is added on top of the session-start environment (childenv.child_env) for the child.
    """

    def __init__(self, name: str, argv: Sequence[str], *, port: int, health_url: str,
                 log_path: str | os.PathLike, env: Mapping[str, str] | None = None,
                 startup_timeout: float = 300.0, cwd: str | os.PathLike | None = None,
                 fatal_log_patterns: Sequence[str] = ()):
        self.name, self.argv, self.port, self.health_url = name, [str(a) for a in argv], port, health_url
        self.log_path, self.startup_timeout, self.cwd = Path(log_path), startup_timeout, cwd
        # Log lines that mean the server will never become ready although its main process lives on
        # (e.g. `trl vllm-serve` whose engine worker died): fail at once instead of at the timeout.
        self.fatal_log = re.compile("|".join(f"(?:{p})" for p in fatal_log_patterns), re.M) if fatal_log_patterns else None
        self.tag = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.env = {**child_env(env), OWNER_VAR: str(os.getpid()), TAG_VAR: self.tag}
        # Python children buffer stdout when it is a file; a killed server would lose its last lines.
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc: subprocess.Popen | None = None
        self.startup_seconds: float | None = None
        self._log = None
        self._started_at = 0.0
        self._stopped = False

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

    def wait_ready(self) -> None:
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
                try:
                    timeout = max(0.1, min(REQUEST_TIMEOUT, deadline - time.monotonic()))
                    if 200 <= http.get(self.health_url, timeout=timeout).status_code < 300:
                        self.startup_seconds = time.monotonic() - self._started_at
                        return
                except requests.RequestException:
                    pass  # not listening yet
                if time.monotonic() >= deadline:
                    raise self._fail()
                time.sleep(POLL_INTERVAL)

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
        elapsed = time.monotonic() - self._started_at
        returncode = self.proc.poll()  # None: still running, i.e. timed out
        self.stop()  # kills grandchildren of a dead server too
        return ServerStartupError(name=self.name, command=shlex.join(self.argv), port=self.port,
                                  returncode=returncode, elapsed=elapsed, log_path=self.log_path,
                                  log_tail=self.log_tail(), env=self.env, fatal=fatal)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it after `grace` seconds, reap. Idempotent."""
        if self.proc is None or self._stopped:
            return
        self._stopped = True
        pgid = self.proc.pid  # start_new_session: the server leads its own group
        try:
            _signal_group(pgid, signal.SIGTERM)
            # Wait for the whole group, not just the leader: a grandchild may outlive it.
            if not _wait_gone(lambda: self.proc.poll() is None or _group_members(pgid), grace):
                _signal_group(pgid, signal.SIGKILL)
                _wait_gone(lambda: self.proc.poll() is None or _group_members(pgid), 10.0)
            self.proc.wait(timeout=5)
        finally:
            if self._log:
                self._log.close()

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

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # group already gone


def _wait_gone(busy, timeout: float) -> bool:
    """Poll `busy()` until it is falsy; return True if that happened within `timeout`."""
    deadline = time.monotonic() + timeout
    while busy():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, pgid, start time) of a pid from /proc, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rfind(")") + 2:].split()  # the command name may contain spaces and ')'
    return fields[0], int(fields[2]), int(fields[19])


def _live(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in "ZX"  # zombies are dead, just not reaped yet


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _group_members(pgid: int) -> list[int]:
    return [pid for pid in _pids() if (st := _stat(pid)) and st[1] == pgid and st[0] not in "ZX"]


def sweep_leftovers(grace: float = 5.0) -> list[str]:
    """Stop tagged processes whose owning pytest process is gone (a crashed run); describe each."""
    own_pgid, orphans = os.getpgid(0), {}
    for pid in _pids():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        env = dict(e.decode(errors="replace").split("=", 1) for e in environ if b"=" in e)
        st = _stat(pid)
        if TAG_VAR not in env or pid == os.getpid() or st is None or st[0] in "ZX":
            continue
        owner = int(env.get(OWNER_VAR, "")) if env.get(OWNER_VAR, "").isdigit() else 0
        owner_st = _stat(owner) if owner > 0 else None
        # The owner started the process, so it must be older; a younger one is a reused pid.
        if owner_st is not None and owner_st[0] not in "ZX" and owner_st[2] <= st[2]:
            continue
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        orphans[pid] = (st[1], f"pid {pid} (owner {owner} gone, tag {env[TAG_VAR]}): {cmd.strip()}")

    # Signal whole groups the sweep owns; a pid sharing a group we don't own is signalled alone.
    def send(sig):
        for pid, (pgid, _) in orphans.items():
            if pgid != own_pgid and pgid > 1 and (pgid in orphans or not _live(pgid)):
                _signal_group(pgid, sig)
            else:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass

    if orphans:
        send(signal.SIGTERM)
        if not _wait_gone(lambda: any(_live(p) for p in orphans), grace):
            send(signal.SIGKILL)
            _wait_gone(lambda: any(_live(p) for p in orphans), 5.0)
    return [desc for _, desc in orphans.values()]
