"""The environment of the processes the harness starts (servers, probes, trainer runs): os.environ as it was
when the session began, plus what the caller adds; never what an engine built in this process left behind.

Building a colocate engine in the test process rewrites os.environ: vLLM's external_launcher executor sets
VLLM_ENABLE_V1_MULTIPROCESSING=0, its CPU platform sets OMP_NUM_THREADS, LD_PRELOAD, LOCAL_WORLD_SIZE and more,
TRL sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT. A `trl vllm-serve` started after that inherited it and ran
its engine core in-process, unlike any user's server (measured on vLLM 0.11.1: ready in 25 s instead of 40 s).

Environments are `ChildEnvironment`s: their repr hides secret values, so `pytest -l` (showlocals) printing a
frame that holds one never shows a token.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

SECRET_NAME = re.compile(r"(_TOKEN|_KEY)$|SECRET|PASSWORD|^HF_TOKEN$|^HUGGING_FACE_HUB_TOKEN$", re.IGNORECASE)
HIDDEN = "***"

_session_start: dict[str, str] | None = None


def is_secret(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


def redact(text: str, env: Mapping[str, str]) -> str:
    """Replace the value of every secret-looking variable in `env` with `***`."""
    # Very short values are skipped: redacting e.g. "1" would mangle the whole text.
    secrets = {v for k, v in env.items() if is_secret(k) and len(v) >= 4}
    for value in sorted(secrets, key=len, reverse=True):  # longest first: overlapping values
        text = text.replace(value, HIDDEN)
    return text


class ChildEnvironment(dict[str, str]):
    """A plain dict for subprocess, whose repr shows `***` for secret-looking variables."""

    def __repr__(self) -> str:
        return repr({k: (HIDDEN if is_secret(k) else v) for k, v in self.items()})


def record_session_start() -> None:
    """Remember os.environ now; the plugin calls this in pytest_configure, before any engine or backend import."""
    global _session_start
    _session_start = dict(os.environ)


def child_env(extra: Mapping[str, str] | None = None) -> ChildEnvironment:
    """The session-start environment (the current one if none was recorded, e.g. outside pytest) plus `extra`.
    A variable a test wants a child to see goes in `extra`, not in os.environ."""
    base = _session_start if _session_start is not None else os.environ
    return ChildEnvironment({**base, **(extra or {})})
