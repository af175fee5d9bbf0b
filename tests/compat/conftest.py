"""Fixtures shared by the compatibility suite: the transformers reference on the engines' weights, the tiny VLM,
the trainer runs that run in the background (trainer_children.py)."""

import importlib.util

import pytest
from trainer_children import (  # noqa: F401  (fixtures)
    server_trainer_child,
    server_trainer_outcomes,
    trainer_server,
    transformers_impl_run,
)

from pytest_vllmcompat.testing import reference
from pytest_vllmcompat.testing.reference import MAX_TOKENS, PROMPTS

CELL_PACKAGES = ("torch", "vllm", "transformers", "trl")


def pytest_configure(config):
    """Outside a cell environment, say what to run instead (before any test module fails to import torch)."""
    missing = [name for name in CELL_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise pytest.UsageError(
            f"tests/compat needs a matrix cell environment, and {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not installed here. Run a cell instead: "
            "`nox -s vllm-0.11.1` (`nox -l` lists them), or install vLLM, torch, transformers and the backend "
            "into this environment. Nothing was run and no result was written.")


@pytest.fixture(scope="session")
def reference_model(vllm_model_dir):
    """(model, tokenizer) in fp32 on CPU, loaded from the same directory the engines load."""
    return reference.load(str(vllm_model_dir))


@pytest.fixture(scope="session")
def prompt_ids(reference_model):
    _, tokenizer = reference_model
    return [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]


@pytest.fixture(scope="session")
def greedy_reference(reference_model, prompt_ids):
    return reference.greedy(*reference_model, prompt_ids, MAX_TOKENS)


@pytest.fixture(scope="session")
def cell(vllmcompat_context):
    """This environment's matrix cell; tests whose expectations depend on it skip outside the matrix."""
    if vllmcompat_context.cell is None:
        pytest.skip(f"not a matrix cell: {vllmcompat_context.matrix_problem}")
    return vllmcompat_context.cell


@pytest.fixture(scope="session")
def tiny_vlm_dir(vllmcompat_context):
    """The tiny LLaVA (built once on the tiny Llama, cached beside it) for the trainers' image paths."""
    from pytest_vllmcompat.testing.tiny_vlm import tiny_vlm_path

    return tiny_vlm_path(vllmcompat_context.cache_dir)


@pytest.fixture(scope="session")
def patch_probes(vllm_model_dir):
    """The backend's import-time patches seen from fresh interpreters (patch_probe.py): one run for the whole suite."""
    import patch_probe

    return patch_probe.run_probes(vllm_model_dir)
