"""The adapter over the backend's API generations: one interface for tests, whatever the release.

  trl.py        Backend: imports the backend, picks the adapter by feature detection, builds engines and clients
  release.py    Release: the installed release's identity and feature flags (what the adapters read)
  colocate.py   ColocateGenerator: VLLMGeneration(mode="colocate")
  client.py     ServerClient: VLLMClient against `trl vllm-serve`
  serve.py      the `trl vllm-serve` command line and its fatal log lines (no backend import)
  sampling.py   SamplingOptions and Generation, the shared request/response shapes
  settings.py   the harness's engine knobs per lane
"""

from .client import ServerClient
from .colocate import ColocateGenerator
from .sampling import Generation, SamplingOptions
from .serve import SERVE_FATAL_LOG_PATTERNS, serve_argv
from .trl import Backend

__all__ = [
           "SERVE_FATAL_LOG_PATTERNS",
           "Backend",
           "ColocateGenerator",
           "Generation",
           "SamplingOptions",
           "ServerClient",
           "serve_argv",
]
