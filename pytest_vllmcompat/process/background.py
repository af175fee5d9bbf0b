"""A child process that runs while the tests go on, and is waited for later: `BackgroundChild`.

Why: some of a cell's work is mostly waiting. The server-mode trainer child spends most of its minute asleep in
the backend's own retry backoff (TRL's VLLMClient waits between retries of a 500), and otherwise sends a few
small requests to the session server; run beside the colocate engine tests it costs them next to nothing
(measured on 2 cores, vLLM 0.11.1: the server child alone 57.0 s, the colocate trainer child alone 19.3 s, both
side by side 54.3 s). Like a server, the child gets its own process group, its output goes to files (a pipe
nobody reads would fill and block it), and the whole group is stopped on `stop()`, on a timeout, and by a
watchdog when this process is SIGKILLed.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .executor import release_watchdog, start_watchdog, stop_group, wait_until


@dataclass(frozen=True)
class Finished:
    """How a background child ended: its exit code (None: it ran past its timeout and was stopped), its whole
    stdout and stderr, and its wall time from start to end (for a child that had ended before anyone waited: to
    its last output, not to the wait)."""
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


class BackgroundChild:
    """`argv` in its own process group from `start()`; `wait()` returns how it ended (Finished), at most
    `timeout` seconds after its start. stdout and stderr go to files in `out_dir`."""

    def __init__(self, name: str, argv: Sequence[str], *, out_dir: str | os.PathLike, env: Mapping[str, str],
                 timeout: float, cwd: str | os.PathLike | None = None):
        self.name, self.argv, self.env, self.timeout = name, [str(a) for a in argv], dict(env), timeout
        self.out_dir, self.cwd = Path(out_dir), cwd
        self.proc: subprocess.Popen | None = None
        self._watchdog: subprocess.Popen | None = None
        self._files: list[IO[bytes]] = []
        self._started_at = self._started_wall = 0.0
        self._finished: Finished | None = None

    @property
    def started(self) -> bool:
        return self.proc is not None

    def start(self) -> None:
        if self.proc is not None:
            raise RuntimeError(f"{self.name} already started")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._files = [open(self.out_dir / f"{self.name}.{part}", "wb") for part in ("stdout", "stderr")]
        self._started_at, self._started_wall = time.monotonic(), time.time()
        try:
            self.proc = subprocess.Popen(self.argv, stdout=self._files[0], stderr=self._files[1],
                                         stdin=subprocess.DEVNULL, start_new_session=True, env=self.env, cwd=self.cwd)
        except BaseException:
            self._close_files()
            raise
        self._watchdog = start_watchdog(self.proc.pid)

    def wait(self) -> Finished:
        """Block until the child ends (or its timeout passes: then its group is stopped). Idempotent."""
        if self._finished is not None:
            return self._finished
        if self.proc is None:
            raise RuntimeError(f"{self.name}: start() first")
        proc = self.proc
        ended_before = proc.poll() is not None
        left = self._started_at + self.timeout - time.monotonic()
        ended = wait_until(lambda: proc.poll() is not None, max(0.0, left), interval=0.1)
        self.stop()  # a grandchild may outlive the leader; nothing is left either way
        seconds = round(time.monotonic() - self._started_at, 1)
        paths = [self.out_dir / f"{self.name}.{part}" for part in ("stdout", "stderr")]
        if ended_before:  # when it ended is not known; its last write (the trainer children print last) is close
            seconds = round(min(seconds, max(p.stat().st_mtime for p in paths) - self._started_wall), 1)
        stdout, stderr = (p.read_text(errors="replace") for p in paths)
        self._finished = Finished(proc.returncode if ended else None, stdout, stderr, seconds)
        return self._finished

    def stop(self) -> None:
        """Stop the whole process group (SIGTERM, then SIGKILL) and the watchdog. Idempotent."""
        if self.proc is None:
            return
        try:
            stop_group(self.proc, grace=5.0)
        finally:
            self._close_files()
            if self._watchdog is not None:
                release_watchdog(self._watchdog)
                self._watchdog = None

    def _close_files(self) -> None:
        for f in self._files:
            f.close()
        self._files = []
