"""Fixtures shared by the compatibility suite: the transformers reference on the engines' weights."""

import pytest

from pytest_vllmcompat.testing import reference
from pytest_vllmcompat.testing.reference import MAX_TOKENS, PROMPTS


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
