"""Thin adapter over TRL's vLLM generation API, so tests are written once.

Covers TRL 0.28.0 - 1.10 (the releases with TRL's own server endpoints) and local checkouts. The adapter is
chosen by feature detection (signatures of `VLLMGeneration` / `VLLMClient`), not by version number:

  VLLMGeneration.generate(prompts, num_generations)          text/chat prompts       (0.28.0, 0.29.0)
  VLLMGeneration.generate(prompts, images, num_generations)  token-id prompts        (0.29.1)
  returns (prompt_ids, completion_ids, logprobs, extra)       logprobs[i][t] = float  (0.28.0)
  returns (..., logprobs, logprob_token_ids, extra)           logprobs[i][t] = [rank-sorted floats] (0.29.x)
  returns (..., logprobs, logprob_token_ids)                  extra_fields dropped                  (1.x)
  VLLMGeneration(is_fsdp_enabled=...)                         up to 1.x; passed only where accepted
  VLLMGeneration(logprobs=...), VLLMClient.generate(logprobs=...)  only 0.29.x

Nothing heavy is imported at module import: torch/trl/vllm/transformers are imported inside functions.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from typing import Any

from ..errors import BackendIncompatible, Unsupported
from ..process.ports import free_port, late_bind_port
from .client import ServerClient
from .colocate import ColocateGenerator, teardown_distributed
from .release import Release
from .sampling import SamplingOptions
from .serve import serve_argv
from .settings import CPU_ENGINE_ENV

# Constructor arguments of VLLMGeneration this adapter relies on.
_REQUIRED_INIT = ("model", "accelerator", "processing_class", "mode", "max_model_length",
                  "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_completion_length",
                  "generation_kwargs", "structured_outputs_regex")
_REQUIRED_CLIENT = ("prompts", "n", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_tokens",
                    "structured_outputs_regex", "generation_kwargs")


class Backend(Release):
    """The installed backend release (Release) plus what builds its engines and clients."""

    @classmethod
    def load(cls) -> Backend:
        """Import trl (which applies its import-time patches) and pick the adapter by feature detection."""
        import trl

        version, location = getattr(trl, "__version__", "unknown"), os.path.dirname(trl.__file__)
        where = f"TRL {version} ({location})"
        try:
            from trl.generation.vllm_client import VLLMClient
            from trl.generation.vllm_generation import VLLMGeneration
        except ImportError as exc:
            raise BackendIncompatible(
                f"{where}: cannot import trl.generation.vllm_generation.VLLMGeneration / "
                f"trl.generation.vllm_client.VLLMClient ({type(exc).__name__}: {exc}); this harness needs the "
                "VLLMGeneration API that TRL introduced in 0.28.0") from exc
        init = frozenset(inspect.signature(VLLMGeneration.__init__).parameters)
        gen = list(inspect.signature(VLLMGeneration.generate).parameters)
        client = frozenset(inspect.signature(VLLMClient.generate).parameters)
        missing = [f"VLLMGeneration.__init__({p}=...)" for p in _REQUIRED_INIT if p not in init]
        missing += [f"VLLMGeneration.generate({p}=...)" for p in ("prompts", "num_generations") if p not in gen]
        missing += [f"VLLMGeneration.{m}()" for m in ("sync_weights",) if not hasattr(VLLMGeneration, m)]
        missing += [f"VLLMClient.generate({p}=...)" for p in _REQUIRED_CLIENT if p not in client]
        if missing:
            raise BackendIncompatible(
                f"{where}: no adapter fits; missing {', '.join(missing)}. Seen signatures: "
                f"VLLMGeneration.generate{inspect.signature(VLLMGeneration.generate)}, "
                f"VLLMClient.generate{inspect.signature(VLLMClient.generate)}")
        token_ids = "images" in gen and gen.index("images") < gen.index("num_generations")
        return cls("trl", version, location, token_ids, init, client)

    def make_colocate(self, model_path: str, *, max_model_length: int = 512, sampling: SamplingOptions | None = None,
                      **vllm_generation_kwargs: Any) -> ColocateGenerator:
        """HF model (float32, CPU) + tokenizer + Accelerator + VLLMGeneration(mode="colocate").

        Extra keyword arguments go to VLLMGeneration (e.g. gpu_memory_utilization, max_num_seqs, model_impl);
        ones this release does not accept raise Unsupported."""
        import torch
        from accelerate import Accelerator
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl.generation.vllm_generation import VLLMGeneration

        unknown = sorted(set(vllm_generation_kwargs) - self.init_params)
        if unknown:
            raise Unsupported(f"TRL {self.version}: VLLMGeneration does not accept {unknown}")
        for key, value in CPU_ENGINE_ENV.items():
            os.environ.setdefault(key, value)
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        model = AutoModelForCausalLM.from_pretrained(model_path).to(device="cpu", dtype=torch.float32)
        accelerator = Accelerator(cpu=True)
        for attempt in range(3):
            if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
                # TRL's ensure_master_addr_port() keeps existing values: give each engine a fresh rendezvous port.
                os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(late_bind_port())
            try:
                fsdp = {"is_fsdp_enabled": False} if "is_fsdp_enabled" in self.init_params else {}  # gone in 1.x
                vg = VLLMGeneration(model, accelerator, processing_class=tokenizer, mode="colocate",
                                    max_model_length=max_model_length, **fsdp, **vllm_generation_kwargs)
            except Exception as exc:  # the port was taken between probe and bind: retry with a new one
                if attempt == 2 or "EADDRINUSE" not in str(exc):
                    raise
                teardown_distributed()
            else:
                return ColocateGenerator(self, vg, sampling or SamplingOptions())
        raise AssertionError("unreachable: the last attempt returns or raises")

    def serve_argv(self, model_path: str, *, host: str = "127.0.0.1", port: int, max_model_len: int | None = 512,
                   extra: Sequence[str] = ()) -> list[str]:
        return serve_argv(self.location, model_path, host=host, port=port, max_model_len=max_model_len, extra=extra)

    def make_client(self, base_url: str, connection_timeout: float = 0.0) -> ServerClient:
        from trl.generation.vllm_client import VLLMClient

        kw: dict[str, Any] = {}
        if "group_port" in inspect.signature(VLLMClient.__init__).parameters:
            # The weight-sync group's port (init_communicator) defaults to a fixed 51216 in TRL: concurrent
            # clients (xdist workers, parallel runs) would collide on it, so give each client a free one.
            kw["group_port"] = free_port()
        return ServerClient(self, VLLMClient(base_url=base_url, connection_timeout=connection_timeout, **kw), base_url)
