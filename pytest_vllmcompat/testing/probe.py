"""Run Python code in a fresh interpreter of this environment and read the JSON it prints.

Used where the import order matters (the backend patches vLLM at import): the probe process never saw
what the test process imported.
"""

from __future__ import annotations

import json
import subprocess
import sys

from ..errors import ProbeFailed
from ..process.childenv import child_env


def run_probe(code: str, *args: str, env: dict[str, str] | None = None, timeout: float = 300) -> dict:
    """The JSON object on the last stdout line of `python -c code args...`, run in the session-start environment
    (childenv) without VLLM_LOGGING_LEVEL (the backend sets it at import; probes check that), then `env`."""
    probe_env = child_env(env)
    if "VLLM_LOGGING_LEVEL" not in (env or {}):
        probe_env.pop("VLLM_LOGGING_LEVEL", None)
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=probe_env,
                          timeout=timeout)
    if proc.returncode != 0:
        raise ProbeFailed(f"probe failed (exit {proc.returncode}): python -c <probe> {' '.join(args)}\n"
                             f"{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
