"""`trl vllm-serve`: its command line (without importing the backend) and the log lines that mean it is dead."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Sequence

# Log lines of `trl vllm-serve` that mean it will never answer /health/ although its main process lives on:
# its LLM worker (a multiprocessing.Process) died, or vLLM's engine core failed to start.
SERVE_FATAL_LOG_PATTERNS = (
    r"^Process \S+-\d+:$",  # multiprocessing's header before the traceback of a worker that raised
    r"EngineCore failed to start",
    r"Engine core initialization failed",
)


def serve_argv(trl_location: str, model_path: str, *, host: str = "127.0.0.1", port: int,
               max_model_len: int | None = 512, extra: Sequence[str] = ()) -> list[str]:
    """argv of `trl vllm-serve` for the trl package at `trl_location` (needs no import of trl, so the server can
    be started before the backend is loaded): the `trl` console script next to sys.executable (what users run)
    when that trl is installed in this environment, else (a checkout on sys.path) the same entry point
    `trl.cli:main` via `python -c`. No --enforce_eager: colocate mode cannot set it, so both modes run the same
    engine config."""
    script = os.path.join(os.path.dirname(sys.executable), "trl")
    if trl_location.startswith(sys.prefix + os.sep) and os.access(script, os.X_OK):
        cmd = [script]
    else:  # e.g. a checkout put on sys.path: make the child import this same trl
        cmd = [sys.executable, "-c", f"import sys; sys.path.insert(0, {os.path.dirname(trl_location)!r}); "
               "sys.argv[0] = 'trl'; from trl.cli import main; sys.exit(main())"]
    argv = cmd + ["vllm-serve", "--model", str(model_path), "--host", host, "--port", str(port)]
    if max_model_len is not None:
        argv += ["--max_model_len", str(max_model_len)]
    return argv + [str(a) for a in extra]


def installed_trl_location() -> str | None:
    """Directory of the trl package this interpreter would import, found without importing it (importing trl
    applies its patches, which some tests must observe first)."""
    spec = importlib.util.find_spec("trl")
    return os.path.dirname(spec.origin) if spec is not None and spec.origin is not None else None
