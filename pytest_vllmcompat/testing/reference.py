"""Transformers references: what the weights predict, computed without vLLM."""

from __future__ import annotations

# The suite's standard prompts and completion length.
PROMPTS = ["The quick brown fox", "Hello, world! This is", "0 1 2 3 4 5"]
MAX_TOKENS = 16


def load(model_dir: str):
    """(model, tokenizer) from `model_dir`, float32 on CPU, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(model_dir)


def stop_token_ids(model, tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id}
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids.update(eos if isinstance(eos, list) else [eos])
    return {i for i in ids if i is not None}


def greedy(model, tokenizer, prompt_ids: list[list[int]], max_tokens: int,
           repetition_penalty: float = 1.0) -> list[list[int]]:
    """Greedy continuation of each prompt, one argmax per step, stopping after an EOS token
    (vLLM includes the EOS token in its output). A plain loop, so it means the same in
    transformers 4 and 5. `repetition_penalty` as vLLM and transformers define it: every token id already in the
    prompt or the completion has its logit divided by the penalty where positive, multiplied where negative."""
    import torch

    stops = stop_token_ids(model, tokenizer)
    results = []
    with torch.no_grad():
        for ids in prompt_ids:
            seq, out = list(ids), []
            for _ in range(max_tokens):
                logits = model(torch.tensor([seq])).logits[0, -1]
                if repetition_penalty != 1.0:
                    seen = torch.tensor(sorted(set(seq)))
                    picked = logits[seen]
                    logits[seen] = torch.where(picked > 0, picked / repetition_penalty, picked * repetition_penalty)
                token = int(torch.argmax(logits))
                out.append(token)
                seq.append(token)
                if token in stops:
                    break
            results.append(out)
    return results


# Conversations for chat-template prompts (a system turn and an earlier assistant turn in the second).
CONVERSATIONS = [
    [{"role": "user", "content": "Hello, world! How are you today?"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is two plus two?"},
     {"role": "assistant", "content": "four"}, {"role": "user", "content": "And three plus three?"}],
]


def chat_prompt_ids(tokenizer, conversation: list[dict]) -> list[int]:
    """`tokenizer.apply_chat_template(conversation, add_generation_prompt=True)` as a list of token ids
    (transformers 5 may return a BatchEncoding where 4 returns the list)."""
    ids = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys") and "input_ids" in ids:
        ids = ids["input_ids"]
    return [int(t) for t in ids]


def sampled_logprobs(model, prompt_ids: list[list[int]], completion_ids: list[list[int]],
                     temperature: float = 1.0) -> list[list[float]]:
    """Log-probability of each completion token given the prompt and the completion before it, as vLLM's
    `logprobs_mode="processed_logprobs"` defines it without top-k/top-p/penalties: log_softmax(logits / T),
    in float32 (one teacher-forced forward pass per row)."""
    import torch

    results: list[list[float]] = []
    with torch.no_grad():
        for prompt, completion in zip(prompt_ids, completion_ids):
            if not completion:
                results.append([])
                continue
            seq = torch.tensor([list(prompt) + list(completion)])
            logits = model(seq).logits[0, len(prompt) - 1: len(prompt) - 1 + len(completion)].float()
            logp = torch.log_softmax(logits / temperature, dim=-1)
            results.append([float(logp[i, tok]) for i, tok in enumerate(completion)])
    return results


def min_greedy_margin(model, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> float:
    """Smallest top1 - top2 logit gap along the given (greedy) continuations: how much numerical noise (bf16)
    greedy decoding can absorb without changing a token."""
    import torch

    margin = float("inf")
    with torch.no_grad():
        for prompt, completion in zip(prompt_ids, completion_ids):
            seq = torch.tensor([list(prompt) + list(completion)])
            logits = model(seq).logits[0, len(prompt) - 1: len(prompt) - 1 + len(completion)].float()
            top2 = torch.topk(logits, 2, dim=-1).values
            margin = min(margin, float((top2[:, 0] - top2[:, 1]).min()))
    return margin


def constrained_greedy(model, tokenizer, prompt_ids: list[list[int]], pattern: str,
                       max_tokens: int) -> tuple[list[list[int]], float]:
    """Greedy decoding restricted to completions the regex `pattern` can still match, as a grammar backend does:
    at each step the highest-logit token whose text keeps the completion a prefix of a match, or EOS once the
    completion is a full match (then the only choice when nothing can follow). Special tokens other than EOS are
    never allowed. Returns (completions, smallest logit gap between the chosen token and the next allowed one):
    how much numerical noise the reference can absorb."""
    import regex  # a dependency of transformers: partial matching
    import torch

    eos = tokenizer.eos_token_id
    specials = set(tokenizer.all_special_ids) - {eos}
    texts = {i: tokenizer.decode([i]) for i in range(len(tokenizer))}
    results, margin = [], float("inf")
    with torch.no_grad():
        for ids in prompt_ids:
            seq, out, text = list(ids), [], ""
            for _ in range(max_tokens):
                logits = model(torch.tensor([seq])).logits[0, -1].float()
                full = regex.fullmatch(pattern, text) is not None
                allowed = [t for t in range(logits.shape[0]) if t not in specials and (
                    (t == eos and full) or (t != eos and texts.get(t) and
                                             regex.fullmatch(pattern, text + texts[t], partial=True)))]
                if not allowed:
                    break
                ranked = sorted(allowed, key=lambda t: -float(logits[t]))
                if len(ranked) > 1:
                    margin = min(margin, float(logits[ranked[0]] - logits[ranked[1]]))
                token = ranked[0]
                out.append(token)
                seq.append(token)
                if token == eos:
                    break
                text += texts[token]
            results.append(out)
    return results, margin
