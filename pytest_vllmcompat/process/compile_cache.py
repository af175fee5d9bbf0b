"""Where vLLM's and torch inductor's compile caches live for every engine the harness runs or measures: under the
harness's cache folder (`<cache>/compile/`), so that the one folder a CI cache step keeps also keeps them warm.

Measured (README "Compile caches"): a tiny-model engine starts in 15-19 s with both caches warm and in 39 s with
both empty. Their defaults (`~/.cache/vllm`, `/tmp/torchinductor_<user>`) are warm on a developer's machine, but
cold on every fresh CI runner and outside the folder it is told to keep. Both caches key their entries by the
versions and code that produced them (that is how their defaults serve every installed vLLM and torch), so one
folder serves every cell. Nothing here changes what the backend passes to vLLM. A variable already set wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

# The harness's cache folder (the tiny models, and these caches): the plugin's vllm_cache_dir setting.
CACHE_DIR_ENV = "VLLMCOMPAT_CACHE_DIR"
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "pytest-vllmcompat"
# variable -> its folder under <cache>/compile/
COMPILE_CACHE_VARS = {"VLLM_CACHE_ROOT": "vllm", "TORCHINDUCTOR_CACHE_DIR": "torchinductor"}


def compile_cache_env(cache_dir: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """The compile-cache variables to add to `environ`: each one `environ` does not set, under cache_dir/compile."""
    return {var: str(cache_dir / "compile" / sub) for var, sub in COMPILE_CACHE_VARS.items() if not environ.get(var)}
