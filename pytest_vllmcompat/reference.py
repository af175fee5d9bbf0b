"""Transformers references: what the weights predict, computed without vLLM."""

from __future__ import annotations


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


def greedy(model, tokenizer, prompt_ids: list[list[int]], max_tokens: int) -> list[list[int]]:
    """Greedy continuation of each prompt, one argmax per step, stopping after an EOS token
    (vLLM includes the EOS token in its output). A plain loop, so it means the same in
    transformers 4 and 5."""
    import torch

    stops = stop_token_ids(model, tokenizer)
    results = []
    with torch.no_grad():
        for ids in prompt_ids:
            seq, out = list(ids), []
            for _ in range(max_tokens):
                logits = model(torch.tensor([seq])).logits[0, -1]
                token = int(torch.argmax(logits))
                out.append(token)
                seq.append(token)
                if token in stops:
                    break
            results.append(out)
    return results
