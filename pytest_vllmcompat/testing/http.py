"""HTTP requests to a server the harness started, failing on the evidence rather than on a timeout.

`trl vllm-serve` does not survive some errors: its LLM worker process dies (or vLLM's EngineCore does) and the
request then blocks forever. Waiting out a read timeout costs minutes and says nothing; `post_watching` watches
the server while the request is in flight and fails within seconds, quoting the worker's error:

- the server's log shows a worker's traceback or the engine core's death, or
- a worker process of the server is exiting: its main thread waits in waitpid ("do_wait"), joining its own
  children. That is how an exception in `llm_worker` looks: Python's multiprocessing joins the worker's children
  (its EngineCore, which never exits by itself) before printing the traceback, so the error would never reach the
  log. The watcher stops that worker's children so it can print it, then quotes it.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import requests

from ..process import procfs
from ..process.executor import wait_until

NO_PROXY: dict[str, Any] = {"http": None, "https": None}  # talk to 127.0.0.1 directly whatever the environment's proxies
# Log lines that mean the request will never be answered: multiprocessing's header before the traceback of a
# worker process that raised (trl vllm-serve's llm_worker), TRL 0.28.0's llm_worker logging the exception it is
# about to re-raise (its traceback then waits for the worker's children), and vLLM's engine core dying.
DEATH_PATTERNS = (r"^Process \S+-\d+:$", r"\[Worker\] Unexpected error in \w+:", r"EngineCore encountered a fatal error",
                  r"EngineDeadError")
_DEATH = re.compile("|".join(f"(?:{p})" for p in DEATH_PATTERNS), re.M)
_EXCEPTION_LINE = re.compile(r"^(?:[\w.]+\.)?\w*(?:Error|Exception)\b.*$", re.M)
T = TypeVar("T")
SETTLE = 1.0  # s: let the dying process finish writing its traceback before quoting it
# Bounds on waiting for that evidence. Unloaded, the worker prints within a second of its children stopping; with
# two -n 2 runs of a cell on 2 cores (22 GiB of 24 in use) 15 s once passed with nothing printed yet (measured).
RELEASE_TERM_WAIT = 10.0  # s after SIGTERM to the worker's children before they get SIGKILL
EVIDENCE_TIMEOUT = 60.0  # s in all for the worker's exception line (or its exit) after death was seen


class Server(Protocol):
    base_url: str
    log_path: Path
    name: str
    died: bool  # set here when a request saw it die (its stop then skips the graceful wait)

    @property
    def pid(self) -> int | None: ...


class ServerDied(AssertionError):
    """The server's worker or engine died while a request was in flight (an AssertionError: the test fails)."""


def _log_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


# Children a healthy process waits for: torch inductor compiles C++ kernels on first use (a vLLM worker or engine core
# then sits in do_wait on g++), so such a wait is work, not an exit.
COMPILERS = ("cc1plus", "cc1", "g++", "gcc", "c++", "cc", "ld", "as", "collect2", "clang", "clang++")


def exiting_worker(server: Server) -> int | None:
    """A worker process of the server (its process group, not the server itself) whose main thread waits in
    waitpid for children that do not exit: an exiting worker. (A healthy `llm_worker` waits on its pipe; seen on
    vLLM 0.11.1: the worker forked by `trl vllm-serve` sat in do_wait after the ValueError, its EngineCore alive.)
    Only TRL's own worker processes qualify: vLLM's (titled `VLLM::...`) and any process waiting on a compiler are
    working (seen on vLLM 0.22.0: a worker compiling an inductor kernel looked exiting, and stopping its g++ killed
    the engine)."""
    if server.pid is None:
        return None
    for pid in procfs.group_members(server.pid):
        if pid == server.pid or procfs.wchan(pid) != "do_wait" or procfs.cmdline(pid).startswith("VLLM::"):
            continue
        children = procfs.children(pid)
        if children and not any(procfs.comm(child) in COMPILERS for child in children):
            return pid
    return None


def _release(worker: int, server: Server, start: int) -> None:
    """Stop the exiting worker's children so that its join returns and it prints its traceback: SIGTERM, and
    SIGKILL for those still there after RELEASE_TERM_WAIT without the death in the log."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for child in procfs.children(worker):
            try:
                os.kill(child, sig)
            except ProcessLookupError:
                pass
        if wait_until(lambda: _DEATH.search(_log_from(server.log_path, start)) or not procfs.live(worker),
                      RELEASE_TERM_WAIT, interval=0.1):
            return


def _evidence(server: Server, start: int, worker: int | None) -> str:
    """The log since the request once it quotes the error: an exception line after the death header, or the
    worker gone (all it will print is printed); at most EVIDENCE_TIMEOUT, then whatever is there."""
    def complete() -> bool:
        log = _log_from(server.log_path, start)
        death = _DEATH.search(log)
        # multiprocessing's "Process X-N:" header comes first and the exception line last; the other patterns
        # are lines of an error already being reported
        after = death.end() if death and death.group(0).startswith("Process ") else 0
        if death and _EXCEPTION_LINE.search(log, after):
            return True
        return worker is not None and not procfs.live(worker)
    wait_until(complete, EVIDENCE_TIMEOUT, interval=0.1)
    time.sleep(SETTLE)
    return _log_from(server.log_path, start)


def post_watching(server: Server, path: str, *, timeout: float, poll: float = 0.2, **kw: Any) -> requests.Response:
    """POST `path` on `server`; return the response, or raise ServerDied as soon as the server's log (from the
    moment of the request on) shows its worker or engine dying. `timeout` stays as the last resort."""
    return call_watching(server, lambda: requests.post(f"{server.base_url}{path}", timeout=timeout,
                                                       proxies=NO_PROXY, **kw), f"POST {path}", poll=poll)


def call_watching(server: Server, call: Callable[[], T], what: str, *, poll: float = 0.2) -> T:
    """`call()` (a request to `server`, e.g. through the backend's VLLMClient, which sets no timeout) in a thread;
    its result, or ServerDied as soon as the server's log or process tree shows that no answer will come."""
    start = Path(server.log_path).stat().st_size if Path(server.log_path).exists() else 0
    result: dict[str, Any] = {}

    def send() -> None:
        try:
            result["response"] = call()
        except BaseException as exc:  # handed to the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(poll)
        if not thread.is_alive():
            break
        how = ""
        worker = exiting_worker(server)
        if worker is not None:
            how = f" (its worker pid {worker} was exiting, blocked joining its children; they were stopped so it reports)"
            _release(worker, server, start)
        log = _log_from(server.log_path, start)
        if how or _DEATH.search(log):
            log = _evidence(server, start, worker)
            errors = [line.strip() for line in _EXCEPTION_LINE.findall(log)]
            server.died = True
            raise ServerDied(f"{server.name} died while serving {what} (no answer came){how}: "
                             f"{' | '.join(dict.fromkeys(errors)) or 'see its log'}\n--- its log since the request "
                             f"---\n{log[-4000:]}")
    if "error" in result:
        raise result["error"]
    return result["response"]
