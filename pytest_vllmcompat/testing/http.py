"""HTTP requests to a server the harness started, failing on the evidence rather than on a timeout.

`trl vllm-serve` does not survive some errors: its LLM worker process dies (or vLLM's EngineCore does) and the
request then blocks forever. Waiting out a read timeout costs half a minute and says nothing; `post_watching`
watches the server's log while the request is in flight and fails within a second of the worker's traceback,
quoting it.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import requests

NO_PROXY: dict[str, Any] = {"http": None, "https": None}  # talk to 127.0.0.1 directly whatever the environment's proxies
# Log lines that mean the request will never be answered: multiprocessing's header before the traceback of a
# worker process that raised (trl vllm-serve's llm_worker), and vLLM's engine core dying.
DEATH_PATTERNS = (r"^Process \S+-\d+:$", r"EngineCore encountered a fatal error", r"EngineDeadError")
_DEATH = re.compile("|".join(f"(?:{p})" for p in DEATH_PATTERNS), re.M)
_EXCEPTION_LINE = re.compile(r"^(?:[\w.]+\.)?\w*(?:Error|Exception)\b.*$", re.M)
SETTLE = 1.0  # s: let the dying process finish writing its traceback before quoting it


class Server(Protocol):
    base_url: str
    log_path: Path
    name: str


class ServerDied(AssertionError):
    """The server's worker or engine died while a request was in flight (an AssertionError: the test fails)."""


def _log_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def post_watching(server: Server, path: str, *, timeout: float, poll: float = 0.2, **kw: Any) -> requests.Response:
    """POST `path` on `server`; return the response, or raise ServerDied as soon as the server's log (from the
    moment of the request on) shows its worker or engine dying. `timeout` stays as the last resort."""
    start = Path(server.log_path).stat().st_size if Path(server.log_path).exists() else 0
    result: dict[str, Any] = {}

    def send() -> None:
        try:
            result["response"] = requests.post(f"{server.base_url}{path}", timeout=timeout, proxies=NO_PROXY, **kw)
        except BaseException as exc:  # handed to the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(poll)
        log = _log_from(server.log_path, start)
        if thread.is_alive() and _DEATH.search(log):
            time.sleep(SETTLE)
            log = _log_from(server.log_path, start)
            errors = [line.strip() for line in _EXCEPTION_LINE.findall(log)]
            raise ServerDied(f"{server.name} died while serving POST {path} (no answer came): "
                             f"{' | '.join(dict.fromkeys(errors)) or 'see its log'}\n--- its log since the request "
                             f"---\n{log[-4000:]}")
    if "error" in result:
        raise result["error"]
    return result["response"]
