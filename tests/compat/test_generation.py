"""Generation through the backend, in every selected mode, against a transformers reference."""

import pytest

from pytest_vllmcompat.backend import SamplingOptions
from pytest_vllmcompat import reference

PROMPTS = ["The quick brown fox", "Hello, world! This is", "0 1 2 3 4 5"]
MAX_TOKENS = 16


@pytest.fixture(scope="session")
def reference_model(vllm_model_dir):
    return reference.load(str(vllm_model_dir))


@pytest.fixture(scope="session")
def prompt_ids(reference_model):
    _, tokenizer = reference_model
    return [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]


@pytest.fixture(scope="session")
def greedy_reference(reference_model, prompt_ids):
    return reference.greedy(*reference_model, prompt_ids, MAX_TOKENS)


@pytest.mark.smoke
def test_greedy_equals_transformers_reference(vllm_generator, prompt_ids, greedy_reference):
    out = vllm_generator.generate(PROMPTS, SamplingOptions(temperature=0.0, max_tokens=MAX_TOKENS))
    assert out.prompt_ids == prompt_ids
    assert out.completion_ids == greedy_reference
