"""What a generation call asks for and what it returns, the same for every backend release and mode."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SamplingOptions:
    """Sampling for one call. `temperature=0.0` is greedy: TRL passes it to vLLM's `SamplingParams` unchanged, which
    then ignores top_p/top_k/min_p and requires n == 1 *per request*. Colocate mode always sends n=1 (it repeats the
    prompt), so greedy n>1 works there; server mode sends n and the server answers 500 (`n must be 1 when using
    greedy sampling`)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 (or -1) disables
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    n: int = 1
    logprobs: int | None = 0  # 0: sampled token only; N: top-N (+ sampled); None: none. TRL 0.28.0 supports only 0.
    structured_outputs_regex: str | None = None
    generation_kwargs: Mapping[str, Any] = field(default_factory=dict)  # extra vLLM SamplingParams (seed, ignore_eos)

    @classmethod
    def greedy(cls, max_tokens: int = 16, **kw: Any) -> SamplingOptions:
        return cls(max_tokens=max_tokens, temperature=0.0, **kw)

    def replace(self, **kw: Any) -> SamplingOptions:
        return dataclasses.replace(self, **kw)


@dataclass(frozen=True)
class Generation:
    """One row per completion (prompt i's n completions are consecutive rows)."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    logprobs: list[list[float | None]] | None  # logprob of the sampled token at each position (all releases)
    top_logprobs: list[list[list[float | None]]] | None  # rank-sorted, as TRL 0.29+ returns them; None on 0.28.0
    logprob_token_ids: list[list[list[int]]] | None  # token ids matching top_logprobs; None on 0.28.0


def is_chat(prompt: Any) -> bool:
    return isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], dict)


def is_ids(prompt: Any) -> bool:
    return isinstance(prompt, (list, tuple)) and bool(prompt) and isinstance(prompt[0], int)


def _rows(xs) -> list[list[int]]:
    return [[int(t) for t in x] for x in xs]


def normalize(prompt_ids, completion_ids, logprobs, logprob_token_ids) -> Generation:
    completion_ids = _rows(completion_ids)
    if logprobs is None:
        sampled = top = None
    elif logprob_token_ids is None:  # 0.28.0: already one float per position
        sampled, top = [list(r) for r in logprobs], None
    else:  # 0.29+: rank-sorted [num_logprobs] per position; the sampled token is always among them
        top = [[list(p) for p in r] for r in logprobs]
        sampled = [[lps[ids.index(tok)] if tok in ids else None for tok, lps, ids in zip(c, r, i)]
                   for c, r, i in zip(completion_ids, top, logprob_token_ids)]
    ids = None if logprob_token_ids is None else [[list(p) for p in r] for r in logprob_token_ids]
    return Generation(_rows(prompt_ids), completion_ids, sampled, top, ids)
