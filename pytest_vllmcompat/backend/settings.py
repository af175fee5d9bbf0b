"""How the harness configures the engines it starts, per lane: one place, used by fixtures, tests and the bench.

Nothing here changes what the backend itself passes to vLLM; these are the knobs the harness owns (model length,
the CPU KV cache size, the CUDA memory share of the session's engines).
"""

from __future__ import annotations

MAX_MODEL_LEN = 512
CPU_ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}  # GiB; plenty for the tiny model, the default is 4
# CUDA lane: the session's colocate engine and server share the first GPU (and the GPU-only tests add engines
# of their own), so neither may take TRL's default 0.9 of its memory. The tiny model needs very little.
# Ignored on the CPU lane, where VLLM_CPU_KVCACHE_SPACE sizes the cache.
CUDA_SESSION_MEMORY = 0.25


def colocate_memory(lane: str) -> dict[str, float]:
    """Extra VLLMGeneration arguments for the session's colocate engine."""
    return {"gpu_memory_utilization": CUDA_SESSION_MEMORY} if lane == "cuda" else {}


def server_memory_args(lane: str, fraction: float | None = None) -> list[str]:
    """`trl vllm-serve` arguments for its GPU memory share: `fraction`, else the session default (CUDA lane)."""
    if fraction is None and lane != "cuda":
        return []
    return ["--gpu_memory_utilization", str(CUDA_SESSION_MEMORY if fraction is None else fraction)]


def engine_env(lane: str) -> dict[str, str]:
    """Environment every engine of this lane gets on top of the children's environment."""
    return dict(CPU_ENGINE_ENV) if lane == "cpu" else {}
