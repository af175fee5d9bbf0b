"""The backend's server mode client: `VLLMClient` against a `trl vllm-serve`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import Unsupported
from .release import Release
from .sampling import Generation, SamplingOptions, is_chat, is_ids, normalize


class ServerClient:
    def __init__(self, backend: Release, client: Any, base_url: str):
        self.backend, self.client, self.base_url = backend, client, base_url.rstrip("/")

    def generate(self, prompts: Sequence[Any], sampling: SamplingOptions | None = None) -> Generation:
        """Strings or token-id lists go to POST /generate/, chat conversations to POST /chat/."""
        s, b = sampling or SamplingOptions(), self.backend
        prompts = list(prompts)
        chat = is_chat(prompts[0])
        kw = dict(n=s.n, repetition_penalty=s.repetition_penalty, temperature=s.temperature, top_p=s.top_p,
                  top_k=s.top_k, min_p=s.min_p, max_tokens=s.max_tokens,
                  structured_outputs_regex=s.structured_outputs_regex, generation_kwargs=dict(s.generation_kwargs))
        b.check_logprobs(s, b.client_params)
        if "logprobs" in b.client_params:
            kw["logprobs"] = s.logprobs
        if chat:
            out = self.client.chat(messages=prompts, **kw)
        else:
            if is_ids(prompts[0]):
                if not b.token_id_prompts:
                    raise Unsupported(f"TRL {b.version}: `trl vllm-serve` /generate/ takes text prompts only")
                prompts = [[int(t) for t in p] for p in prompts]
            out = self.client.generate(prompts=prompts, **kw)
        # The server returns one prompt_ids row per prompt; repeat it per completion like VLLMGeneration does.
        prompt_ids = [ids for ids in out["prompt_ids"] for _ in range(s.n)]
        return normalize(prompt_ids, out["completion_ids"], out.get("logprobs"), out.get("logprob_token_ids"))

    def reset_prefix_cache(self) -> None:
        self.client.reset_prefix_cache()

    def health(self, timeout: float = 5.0) -> int:
        import requests

        with requests.Session() as http:
            http.trust_env = False
            return http.get(f"{self.base_url}/health/", timeout=timeout).status_code

    def sync_weights(self) -> None:
        raise Unsupported("server-mode weight sync (init_communicator/update_named_param) needs CUDA + NCCL")

    def close(self) -> None:
        self.client.session.close()
