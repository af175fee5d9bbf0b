"""Run Python code in a fresh interpreter of this environment and read the JSON it prints.

Used where the import order matters (the backend patches vLLM at import): the probe process never saw
what the test process imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def run_probe(code: str, *args: str, env: dict[str, str] | None = None, timeout: float = 300) -> dict:
    """The JSON object on the last stdout line of `python -c code args...`. VLLM_LOGGING_LEVEL is removed from the
    environment (the backend sets it at import; probes check that), then `env` is applied."""
    child_env = {k: v for k, v in os.environ.items() if k != "VLLM_LOGGING_LEVEL"}
    child_env.update(env or {})
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=child_env,
                          timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"probe failed (exit {proc.returncode}): python -c <probe> {' '.join(args)}\n"
                             f"{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
