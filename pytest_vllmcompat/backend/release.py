"""Which backend release is installed, as feature flags read from its signatures (see trl.py)."""

from __future__ import annotations

from dataclasses import dataclass

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

    @property
    def supports_logprobs_option(self) -> bool:
        return "logprobs" in self.init_params

    def check_logprobs(self, sampling: SamplingOptions, params: frozenset) -> None:
        if "logprobs" not in params and sampling.logprobs != 0:
            raise Unsupported(f"TRL {self.version}: logprobs={sampling.logprobs!r} is not supported "
                              "(this release always returns the sampled token's logprob only)")
