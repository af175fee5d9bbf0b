"""Fixtures shared by the compatibility suite: the transformers reference on the engines' weights."""

import pytest

from pytest_vllmcompat import reference
from pytest_vllmcompat.reference import MAX_TOKENS, PROMPTS


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
