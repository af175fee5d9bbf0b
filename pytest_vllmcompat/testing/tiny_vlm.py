"""Offline tiny LLaVA (a vision-language model) for the trainers' image paths, built on the tiny Llama.

The language model is the tiny Llama of `models.py` (its weights and tokenizer, plus one `<image>` token); the
vision tower is a 2-layer CLIP on 32x32 images with 8x8 patches, so each image becomes 16 `<image>` tokens in the
prompt (CLS dropped: `vision_feature_select_strategy="default"`). LLaVA because both sides have it in every
release the matrix runs: transformers 4.5x and 5 (`LlavaForConditionalGeneration`, `LlavaProcessor`) and vLLM
0.10.2 on (`LlavaForConditionalGeneration`), with plain RoPE (Qwen2-VL would add M-RoPE to the engine's path).
The chat template renders a message's content given as a string, or as parts (`{"type": "image"}` -> `<image>`,
`{"type": "text", "text": ...}` -> the text), which is what TRL's `prepare_multimodal_messages` makes and what
vLLM's chat path passes to a template that loops over content parts.

This module imports no third-party package at import time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import random

from .models import CHAT_TEMPLATE, TINY_MODEL_SPEC, cached_build, content_key, tiny_model_path

BUILDER_VERSION = 1
IMAGE_TOKEN = "<image>"


@dataclasses.dataclass(frozen=True)
class TinyVisionSpec:
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2  # vision_feature_layer -2 reads the first layer's output
    num_attention_heads: int = 2
    image_size: int = 32
    patch_size: int = 8
    init_range: float = 0.5
    seed: int = 4321

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


TINY_VISION_SPEC = TinyVisionSpec()

VLM_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '" + IMAGE_TOKEN + "' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_vlm_path(cache_root: pathlib.Path) -> pathlib.Path:
    """Return the directory of the tiny LLaVA (model, tokenizer, processor), building it once if needed."""
    cache_root = pathlib.Path(cache_root)
    text_dir = tiny_model_path(cache_root)
    payload = {"text": content_key(TINY_MODEL_SPEC), "vision": dataclasses.asdict(TINY_VISION_SPEC),
               "template": VLM_CHAT_TEMPLATE, "text_template": CHAT_TEMPLATE, "builder": BUILDER_VERSION}
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    return cached_build(cache_root, f"tiny-llava-{key}", lambda dest: build_tiny_vlm(text_dir, dest))


def build_tiny_vlm(text_dir: pathlib.Path, dest: pathlib.Path) -> None:
    """Build the tiny LLaVA from the tiny Llama in `text_dir` into `dest` (an existing, empty directory)."""
    import torch
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaForCausalLM,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    spec = TINY_VISION_SPEC
    tokenizer = AutoTokenizer.from_pretrained(str(text_dir))
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)  # the same call in transformers 4 and 5
    tokenizer.chat_template = VLM_CHAT_TEMPLATE
    text = LlamaForCausalLM.from_pretrained(str(text_dir), dtype=torch.float32)
    text_config = text.config
    text_config.vocab_size = len(tokenizer)
    vision_config = CLIPVisionConfig(hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
                                     num_hidden_layers=spec.num_hidden_layers,
                                     num_attention_heads=spec.num_attention_heads, image_size=spec.image_size,
                                     patch_size=spec.patch_size, projection_dim=spec.hidden_size)
    config = LlavaConfig(vision_config=vision_config, text_config=text_config,
                         image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), vision_feature_layer=-2,
                         vision_feature_select_strategy="default", projector_hidden_act="gelu",
                         tie_word_embeddings=False)
    model = LlavaForConditionalGeneration(config).to(torch.float32)
    rng = random.Random(spec.seed)
    text_weights = text.state_dict()
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            text_name = _text_weight_name(name)
            if text_name is not None:  # the tiny Llama's own weight (the new <image> row: a random row)
                source = text_weights[text_name]
                param.zero_()
                param[: source.shape[0]].copy_(source)
                extra = param[source.shape[0]:]
            elif name.endswith(("norm.weight", "layer_norm1.weight", "layer_norm2.weight", "layernorm.weight")):
                param.fill_(1.0)
                continue
            elif name.endswith("bias"):
                param.zero_()
                continue
            else:
                extra = param
            if extra.numel():  # Python's random: the same weights whatever torch's generator does
                values = [(2.0 * rng.random() - 1.0) * spec.init_range / extra.shape[-1] ** 0.5
                          for _ in range(extra.numel())]
                extra.copy_(torch.tensor(values, dtype=torch.float32).view(extra.shape))
    model = model.to(getattr(torch, TINY_MODEL_SPEC.dtype))
    model.generation_config = text.generation_config
    model.save_pretrained(str(dest))
    image_processor = CLIPImageProcessor(size={"shortest_edge": spec.image_size},
                                         crop_size={"height": spec.image_size, "width": spec.image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=spec.patch_size,
                               vision_feature_select_strategy="default", chat_template=VLM_CHAT_TEMPLATE,
                               num_additional_image_tokens=1)  # CLIP's CLS token, dropped by "default"
    processor.save_pretrained(str(dest))
    tokenizer.save_pretrained(str(dest))


def _text_weight_name(name: str) -> str | None:
    """The tiny Llama's name of a LLaVA language-model weight, else None (a vision or projector weight)."""
    for prefix in ("model.language_model.", "language_model.model."):  # 4.52+ and 5; before 4.52
        if name.startswith(prefix):
            return "model." + name.removeprefix(prefix)
    if name in ("lm_head.weight", "language_model.lm_head.weight"):
        return "lm_head.weight"
    return None
