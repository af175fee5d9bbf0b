"""Generation through the backend, in every selected mode, against a transformers reference."""

import pytest

from pytest_vllmcompat.backend import SamplingOptions
from pytest_vllmcompat.testing.reference import MAX_TOKENS, PROMPTS


@pytest.mark.smoke
def test_greedy_equals_transformers_reference(vllm_generator, prompt_ids, greedy_reference):
    out = vllm_generator.generate(PROMPTS, SamplingOptions(temperature=0.0, max_tokens=MAX_TOKENS))
    assert out.prompt_ids == prompt_ids
    assert out.completion_ids == greedy_reference
