"""Which backend release is installed, as feature flags read from its signatures (see trl.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property

from ..errors import Unsupported
from .sampling import SamplingOptions


@dataclass(frozen=True)
class Release:
    """A backend release as the adapters see it: its identity and the parameters its API accepts."""

    name: str
    version: str
    location: str  # directory of the imported trl package
    token_id_prompts: bool  # VLLMGeneration.generate(prompts: list[list[int]], images, num_generations)
    init_params: frozenset  # VLLMGeneration.__init__ parameter names
    client_params: frozenset  # VLLMClient.generate parameter names

    @cached_property
    def server_is_vllm_serve(self) -> bool:
        """`trl vllm-serve` execs stock `vllm serve` (TRL 1.11+: the OpenAI API, vLLM's dev endpoints, no TRL
        endpoints) rather than serving TRL's own FastAPI app (/generate/, /chat/, ...). Read from its source, which
        needs no import (importing it would import vLLM)."""
        path = os.path.join(self.location, "scripts", "vllm_serve.py")
        try:
            with open(path, encoding="utf-8") as f:
                return "vllm.entrypoints.cli.main" in f.read()
        except OSError:
            return False

    @property
    def server_paths(self) -> dict[str, str]:
        """The HTTP paths the backend's client uses for each purpose, by server kind."""
        if self.server_is_vllm_serve:
            return {"generate": "/v1/completions", "chat": "/v1/chat/completions",
                    "reset_prefix_cache": "/reset_prefix_cache"}
        return {"generate": "/generate/", "chat": "/chat/", "reset_prefix_cache": "/reset_prefix_cache/"}

    @property
    def supports_logprobs_option(self) -> bool:
        return "logprobs" in self.init_params

    def check_logprobs(self, sampling: SamplingOptions, params: frozenset) -> None:
        if "logprobs" not in params and sampling.logprobs != 0:
            raise Unsupported(f"TRL {self.version}: logprobs={sampling.logprobs!r} is not supported "
                              "(this release always returns the sampled token's logprob only)")
