"""What is installed in this environment, read from distribution metadata only.

Cheap enough for the report header and `pytest --help`: nothing is imported.
"""

from __future__ import annotations

from importlib import metadata

from . import cpu_identity

PACKAGES = ("vllm", "torch", "transformers", "trl", "tokenizers", "accelerate")


def installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    return {name: installed(name) for name in PACKAGES}


def vllm_description() -> str:
    version = installed("vllm")
    if version is None:
        return "vllm not installed"
    origin = cpu_identity.provenance()
    return f"vllm {version}" + (f" (built from {origin['built_from']})" if origin else "")


def transformers_line() -> str | None:
    version = installed("transformers")
    return version.split(".")[0] if version else None
