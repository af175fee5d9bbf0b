"""Offline, deterministic tiny Llama model + tokenizer for CPU vLLM tests.

No model hub is reachable, so the model is built locally: a byte-level BPE
tokenizer trained on an in-code corpus and a 2-layer Llama with weights drawn
from Python's own `random` (portable across torch/transformers versions).
The result is cached under a content-keyed directory and built only once,
even with concurrent pytest-xdist workers.

This module imports no third-party package at import time.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import importlib.metadata
import json
import os
import pathlib
import random
import shutil
import tempfile

# Bump when the builder's output changes for the same spec.
BUILDER_VERSION = 2


@dataclasses.dataclass(frozen=True)
class TinyModelSpec:
    vocab_size: int = 512  # tokenizer training target; the model uses len(tokenizer)
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 2  # head_dim 64: vLLM CPU attention needs 32..256 step 32
    num_key_value_heads: int = 1  # GQA, so the grouped path is exercised too
    max_position_embeddings: int = 1024
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # Uniform(-init_range, init_range) weights, larger than the usual 0.02 so that
    # attention and MLP visibly shape the residual stream.
    init_range: float = 0.5
    # vLLM runs a float32 checkpoint in bfloat16 on CPU ("auto" dtype downcasts
    # float32 models, and TRL's colocate mode passes no dtype), so the checkpoint
    # is bfloat16: both sides then use exactly the same weights. To keep greedy
    # decoding robust to bf16 kernel noise, lm_head carries a strong "successor"
    # map t -> next(t) (a single cycle over the non-special tokens) on top of a
    # small random part: top1-top2 margins are several logits wide.
    dtype: str = "bfloat16"
    lm_head_random_range: float = 0.1
    residual_out_range: float = 0.003  # o_proj / down_proj: small writes, so the successor map decides greedy (min top1-top2 margin 4.7 logits over 192 steps)
    successor_strength: float = 2.0
    seed: int = 1234
    bos_token: str = "<|bos|>"
    eos_token: str = "<|im_end|>"  # ChatML: an assistant turn ends with <|im_end|>
    pad_token: str = "<|pad|>"
    special_tokens: tuple = ("<|bos|>", "<|eos|>", "<|pad|>", "<|im_start|>", "<|im_end|>")


TINY_MODEL_SPEC = TinyModelSpec()

# ChatML. An assistant message's tool calls are rendered after its content (arguments as given when a string, else
# as JSON), so that a test can see what a tool-call history in a dataset becomes (TRL 0.28.0/0.29.0 json.dumps the
# arguments, 0.29.1 passes the dicts); messages without tool calls render as plain ChatML.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + (message['content'] or '') }}"
    "{% if message.tool_calls %}{% for call in message.tool_calls %}"
    "{{ '<tool_call>' + call.function.name + ' ' + (call.function.arguments if call.function.arguments is string"
    " else call.function.arguments | tojson) + '</tool_call>' }}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = """\
The quick brown fox jumps over the lazy dog. A small model can still speak.
Once upon a time, in a quiet village by the river, there lived an old baker.
Every morning she baked bread, cakes and sweet rolls for the people of the town.
Hello, world! How are you today? I am fine, thank you. What is your name?
The weather is cold and windy; the sky is grey, and rain is falling on the roof.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 256 512 1024 2048 3.14 2.718 -1 +7 = 12%.
def add(a, b):\n    return a + b\n\nprint(add(2, 3))  # prints 5
for i in range(10): if i % 2 == 0: total += i; else: continue
{"name": "tiny", "layers": 2, "ok": true, "items": [1, 2, 3], "value": null}
Question: what is two plus two? Answer: four. Question: what color is grass? Answer: green.
User: please write a short poem about the sea. Assistant: The sea is wide and blue and deep.
Students learn reading, writing, science, history, music and mathematics at school.
Engineers build bridges, roads, engines, computers, networks and reliable software.
Testing makes software better: unit tests, integration tests, and end to end checks.
Generation with greedy decoding picks the most likely next token at every step.
Mountains, forests, deserts, oceans, islands, lakes, valleys and rivers cover Earth.
Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February March April
red orange yellow green blue indigo violet black white brown pink purple gold silver
cat dog bird fish horse cow sheep goat mouse lion tiger bear wolf fox rabbit duck
Why? Because! Really... Yes, no, maybe: (maybe) [perhaps] <tag> 'quote' "double" `code`
Les enfants jouent dans le jardin. Der Hund schläft. El gato come. 日本語のテキスト。
"""


def _dist_version(name: str) -> str:
    return ".".join(importlib.metadata.version(name).split(".")[:2])


def content_key(spec: TinyModelSpec) -> str:
    # config.json embeds transformers_version, and BPE training may change with the
    # tokenizers version, so both (major.minor) are part of the key.
    payload = {
        "spec": dataclasses.asdict(spec),
        "corpus": _CORPUS,
        "chat_template": CHAT_TEMPLATE,
        "builder": BUILDER_VERSION,
        "transformers": _dist_version("transformers"),
        "tokenizers": _dist_version("tokenizers"),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def tiny_model_path(cache_root: pathlib.Path) -> pathlib.Path:
    """Return the directory of the tiny model, building it once if needed."""
    return cached_build(pathlib.Path(cache_root), f"tiny-llama-{content_key(TINY_MODEL_SPEC)}", build_tiny_model)


def cached_build(cache_root: pathlib.Path, name: str, build) -> pathlib.Path:
    """`cache_root / name`, made by `build(tmp_dir)` once: under a file lock (concurrent pytest-xdist workers wait for
    the first), into a temporary directory renamed into place, so the directory, once there, is always complete."""
    final = cache_root / name
    if final.is_dir():  # only ever created by an atomic rename: always complete
        return final
    cache_root.mkdir(parents=True, exist_ok=True)
    with open(cache_root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        if final.is_dir():  # another worker built it while we waited
            return final
        # Leftovers of a killed builder: safe to remove, we hold the lock.
        for stale in cache_root.glob(f".{name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=cache_root))
        try:
            build(tmp)
            os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def _train_tokenizer(spec: TinyModelSpec):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # Deliberately no post-processor: no automatic BOS, so a text tokenizes the
    # same in vLLM and transformers.
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=list(spec.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(keepends=True), trainer=trainer)
    return tok


def _add_successor_map(model, rng: random.Random, spec: TinyModelSpec, special_ids: set[int]) -> None:
    """lm_head[next(t)] += strength * unit(embedding[t]): the model prefers a fixed successor.

    next() is one cycle through the non-special tokens (no short loops, never EOS);
    special tokens lead into the cycle.
    """
    embed = model.model.embed_tokens.weight
    head = model.lm_head.weight
    ordinary = [i for i in range(embed.shape[0]) if i not in special_ids]
    rng.shuffle(ordinary)
    successor = {t: ordinary[(k + 1) % len(ordinary)] for k, t in enumerate(ordinary)}
    successor.update({t: ordinary[k] for k, t in enumerate(sorted(special_ids))})
    for token, nxt in successor.items():
        head[nxt] += spec.successor_strength * embed[token] / embed[token].norm()


def build_tiny_model(dest: pathlib.Path) -> None:
    """Build the tokenizer and model into `dest` (an existing, empty directory)."""
    import torch
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,  # TokenizersBackend in transformers 5
    )

    spec = TINY_MODEL_SPEC
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(spec),
        bos_token=spec.bos_token,
        eos_token=spec.eos_token,
        pad_token=spec.pad_token,
        additional_special_tokens=[t for t in spec.special_tokens
                                   if t not in (spec.bos_token, spec.eos_token, spec.pad_token)],
        model_max_length=spec.max_position_embeddings,
        padding_side="left",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(str(dest))

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (spec.bos_token, spec.eos_token, spec.pad_token)}
    config = LlamaConfig(
        vocab_size=len(tokenizer),  # every id the model can emit decodes
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        rms_norm_eps=spec.rms_norm_eps,
        rope_theta=spec.rope_theta,
        tie_word_embeddings=False,
        initializer_range=spec.init_range,
        bos_token_id=ids[spec.bos_token],
        eos_token_id=ids[spec.eos_token],
        pad_token_id=ids[spec.pad_token],
        dtype=spec.dtype,
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    # Overwrite every weight from Python's `random` (its random() sequence is
    # guaranteed stable), so the weights don't depend on torch or on the
    # transformers init scheme. Norm weights stay at 1.
    rng = random.Random(spec.seed)
    a = spec.init_range
    with torch.no_grad():
        for pname, param in sorted(model.named_parameters()):
            if pname.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                scale = {"lm_head.weight": spec.lm_head_random_range}.get(pname, a)
                if pname.endswith(("o_proj.weight", "down_proj.weight")):
                    scale = spec.residual_out_range
                values = [(2.0 * rng.random() - 1.0) * scale for _ in range(param.numel())]
                param.copy_(torch.tensor(values, dtype=torch.float32).view(param.shape))
        _add_successor_map(model, rng, spec, special_ids=set(tokenizer.all_special_ids))
    model = model.to(getattr(torch, spec.dtype))
    model.generation_config = GenerationConfig(
        bos_token_id=ids[spec.bos_token], eos_token_id=ids[spec.eos_token], pad_token_id=ids[spec.pad_token]
    )
    model.save_pretrained(str(dest))
