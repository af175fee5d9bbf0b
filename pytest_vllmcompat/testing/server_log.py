"""One client's part of a shared `trl vllm-serve` log: what a failing trainer run quotes as the server's side.

Several processes use the cell's session server at once (the pytest process, the server-mode trainer children). A
run's failure text holds what the server logged during the run, and a known failure's pattern may need the server's
traceback (TRL 0.29.x RLOO: `ResponseValidationError`); another client's traceback in that text could match a
pattern that this run's own failure does not. So a run quotes only:
  - the access lines of its own connections (uvicorn: `INFO:     127.0.0.1:PORT - "POST /generate/ ..." 500 ...`),
  - the `Exception in ASGI application` blocks that follow them (uvicorn logs the 500's access line when the
    response starts, then the exception that caused it),
  - every line that belongs to no request (the engine's own log, a worker that died).
A block whose request cannot be told is kept only if it follows one of this run's access lines: a failure then
lacks evidence (a loud failure) rather than borrows another run's.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable

ACCESS = re.compile(r'^INFO:\s+[\d.:\[\]a-f]+:(?P<port>\d+) - "')
ASGI_ERROR = re.compile(r"^ERROR:\s+Exception in ASGI application")
# The first line of a log record of the processes of `trl vllm-serve`: uvicorn's (`INFO:     `), vLLM's
# (`INFO 12-04 20:38:27 [...]`, also prefixed `(EngineCore_DP0 pid=N) `, maybe coloured), TRL's logger
# (`2026-12-04 20:35:52,636 - `), torch's C++ warnings (`[W1204 20:35:12...`). A line of no such form continues the
# record before it (a traceback).
COLOUR = r"(?:\x1b\[[\d;]*m)?"  # vLLM colours the process prefix on a terminal-like stream
RECORD_START = re.compile(rf"^(?:{COLOUR}\(\w+ pid=\d+\){COLOUR}\s*)?(?:(?:DEBUG|INFO|WARNING|ERROR|CRITICAL):\s|"
                          r"(?:DEBUG|INFO|WARNING|ERROR|CRITICAL) \d\d-\d\d |\d{4}-\d\d-\d\d |\[[WEI]\d{4} )")


def lines_of_client(lines: Iterable[str], client_ports: Collection[int]) -> list[str]:
    """The `lines` (of a slice of a `trl vllm-serve` log) that are this client's (`client_ports`: the local ports of
    its connections to the server) or nobody's."""
    kept: list[str] = []
    last_access_ours = False  # whose request the latest access line was
    keep = True  # whether the current record (and its continuation lines) is kept
    for line in lines:
        access = ACCESS.match(line)
        if access:
            last_access_ours = int(access["port"]) in client_ports
            keep = last_access_ours
        elif ASGI_ERROR.match(line):
            keep = last_access_ours
        elif RECORD_START.match(line):
            keep = True
        if keep:
            kept.append(line)
    return kept
