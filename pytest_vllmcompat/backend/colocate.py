"""The backend's colocate mode: `VLLMGeneration(mode="colocate")`, an in-process `vllm.LLM`."""

from __future__ import annotations

import gc
from collections.abc import Sequence
from typing import Any

from ..errors import BackendIncompatible
from .release import Release
from .sampling import Generation, SamplingOptions, is_chat, is_ids, normalize


def teardown_distributed() -> None:
    gc.collect()
    try:  # vLLM's own teardown: also gc.unfreeze()s (vLLM may gc.freeze() after start-up) and empties caches
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()
    except ImportError:
        try:
            from vllm.distributed.parallel_state import (
                destroy_distributed_environment,
                destroy_model_parallel,
            )

            destroy_model_parallel()
            destroy_distributed_environment()
        except ImportError:
            pass
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    gc.collect()
    if torch.cuda.is_available():  # give the freed engine memory back to the driver (cuda lane)
        torch.cuda.empty_cache()


class ColocateGenerator:
    def __init__(self, backend: Release, vllm_generation: Any, sampling: SamplingOptions):
        self.backend, self.vllm_generation, self.sampling = backend, vllm_generation, sampling
        self.model, self.tokenizer = vllm_generation.model, vllm_generation.processing_class

    @property
    def llm(self):
        return self.vllm_generation.llm

    def _prompt_input(self, prompt: Any) -> Any:
        if self.backend.token_id_prompts:  # tokenized as TRL's GRPOTrainer._tokenize_prompts does
            if isinstance(prompt, str):
                return self.tokenizer(text=prompt)["input_ids"]
            if is_chat(prompt):  # return_dict=True as TRL does: transformers 5 returns a BatchEncoding by default
                encoded = self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                             return_dict=True)
                return [int(t) for t in encoded["input_ids"]]
            return [int(t) for t in prompt]
        # Text releases: strings are tokenized by vLLM, chats go to LLM.chat; token ids as a vLLM TokensPrompt.
        return {"prompt_token_ids": [int(t) for t in prompt]} if is_ids(prompt) else prompt

    def generate(self, prompts: Sequence[Any], sampling: SamplingOptions | None = None) -> Generation:
        """prompts: strings, chat conversations (lists of messages) or token-id lists (one kind per call)."""
        s = sampling or self.sampling
        b, vg = self.backend, self.vllm_generation
        b.check_logprobs(s, b.init_params)
        vg.temperature, vg.top_p, vg.top_k, vg.min_p = s.temperature, s.top_p, s.top_k, s.min_p
        vg.repetition_penalty, vg.max_completion_length = s.repetition_penalty, s.max_tokens
        vg.structured_outputs_regex, vg.generation_kwargs = s.structured_outputs_regex, dict(s.generation_kwargs)
        if b.supports_logprobs_option:
            vg.logprobs = s.logprobs
        # Like the trainers: each prompt repeated n times; colocate generates with n=1 per row.
        rows = [self._prompt_input(p) for p in prompts for _ in range(s.n)]
        if b.token_id_prompts:
            out = vg.generate(rows, None, num_generations=s.n)
        else:
            out = vg.generate(rows, num_generations=s.n)
        if len(out) == 5:  # 0.29.x: (..., logprob_token_ids, extra_fields)
            prompt_ids, completion_ids, logprobs, logprob_ids, _ = out
        elif len(out) == 4 and b.supports_logprobs_option:  # 1.x: extra_fields dropped
            prompt_ids, completion_ids, logprobs, logprob_ids = out
        elif len(out) == 4:  # 0.28.0: (..., logprobs, extra)
            (prompt_ids, completion_ids, logprobs, _), logprob_ids = out, None
        else:
            raise BackendIncompatible(f"TRL {b.version}: VLLMGeneration.generate returned a {len(out)}-tuple")
        return normalize(prompt_ids, completion_ids, logprobs, logprob_ids)

    def sync_weights(self) -> None:
        self.vllm_generation.sync_weights()

    def close(self) -> None:
        """Free the engine and the torch.distributed state it created, so another engine can be built."""
        vg, self.vllm_generation = self.vllm_generation, None
        llm = getattr(vg, "llm", None) if vg is not None else None
        if llm is not None:
            vg.llm = None
            # Shut the engine core down explicitly (executor, worker, KV cache) instead of relying on the last
            # reference going away: a traceback or a test may still hold the LLM. In-process with colocate's
            # external_launcher executor; best effort, attribute names differ between vLLM releases.
            shutdown = getattr(getattr(getattr(llm, "llm_engine", None), "engine_core", None), "shutdown", None)
            if callable(shutdown):
                try:
                    shutdown()
                except Exception:
                    pass
        del vg, llm
        teardown_distributed()
