"""The backend's import-time vLLM patches as data: where each applies, and the error vLLM's original raises there.

Used by the compatibility suite's tripwires (tests/compat/test_patch_tripwires.py, test_patches.py) and by the
plugin's own check that every patch is still needed by some cell of the matrix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from packaging.version import Version


@dataclass(frozen=True)
class Patch:
    module: str  # the vLLM module whose attribute the backend replaces
    condition: Callable[[str, str], bool]  # (vLLM version, transformers line) -> the backend patches it
    condition_text: str
    error: tuple[str, str]  # (exception type, text in its message) of vLLM's original where the patch applies


PATCH_MODULE = "trl._compat"

PATCHES = {
    "DisabledTqdm": Patch(
        module="vllm.model_executor.model_loader.weight_utils",
        condition=lambda vllm, tf: Version(vllm) < Version("0.11.1"),
        condition_text="vllm < 0.11.1",
        error=("TypeError", "got multiple values for keyword argument 'disable'"),
    ),
    "get_cached_tokenizer": Patch(
        module="vllm.transformers_utils.tokenizer",
        condition=lambda vllm, tf: int(tf) >= 5 and Version(vllm) < Version("0.12.0"),
        condition_text="transformers >= 5 and vllm < 0.12.0",
        error=("AttributeError", "all_special_tokens_extended"),
    ),
}


def cells_needing(name: str, vllm_versions: tuple[str, ...], transformers_lines: tuple[str, ...]) -> list[str]:
    """The matrix cells (as session names) in which the backend applies patch `name`."""
    condition = PATCHES[name].condition
    return [f"vllm-{v}(tf{t})" for v in vllm_versions for t in transformers_lines if condition(v, t)]
