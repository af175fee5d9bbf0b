"""Colocate weight sync: `VLLMGeneration.sync_weights()` pushes the trainer's (HF model's) parameters into the
in-process engine, which then generates what transformers predicts for the new weights.

Server-mode weight sync (NCCL) needs CUDA: tests/compat/test_gpu.py.
"""

import pytest
import torch

from pytest_vllmcompat.backend import SamplingOptions
from pytest_vllmcompat.testing import reference
from pytest_vllmcompat.testing.reference import MAX_TOKENS, PROMPTS

pytestmark = pytest.mark.vllm_mode("colocate")


def greedy(generator):
    return generator.generate(PROMPTS, SamplingOptions.greedy(MAX_TOKENS))


@pytest.fixture
def perturbable_model(request, colocate_generator):
    """The colocate generator's HF model; whatever a test does to its weights, they are restored and synced
    back into the engine afterwards (and checked), so later tests see the original weights. Where the test's own
    sync raised (a release that cannot load weights into a running engine), the restore cannot sync either and
    is not tried: the test's failure says why."""
    model = colocate_generator.model
    saved = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    original = greedy(colocate_generator)
    yield model
    with torch.no_grad():
        model.load_state_dict(saved)
    if getattr(request.node, "sync_raised", False):
        return
    colocate_generator.sync_weights()
    assert greedy(colocate_generator).completion_ids == original.completion_ids, "weights not restored"


def sync(request, generator) -> None:
    try:
        generator.sync_weights()
    except Exception:
        request.node.sync_raised = True
        raise


def test_sync_weights_makes_the_engine_follow_the_new_weights(request, colocate_generator, perturbable_model):
    model, tokenizer = perturbable_model, colocate_generator.tokenizer
    before = greedy(colocate_generator)
    assert before.completion_ids == reference.greedy(model, tokenizer, before.prompt_ids, MAX_TOKENS)

    with torch.no_grad():
        # A new successor map: rotate lm_head's rows (a permutation keeps the logit margins, so greedy stays robust
        # to bf16), and move the embeddings a little (every layer's input changes).
        head = model.get_output_embeddings().weight
        head.copy_(torch.roll(head, shifts=1, dims=0))
        emb = model.get_input_embeddings().weight
        emb.add_(torch.randn(emb.shape, generator=torch.Generator().manual_seed(0)) * 0.01 * emb.std())
    expected = reference.greedy(model, tokenizer, before.prompt_ids, MAX_TOKENS)
    assert expected != before.completion_ids, "precondition: the perturbation changes greedy predictions"
    assert reference.min_greedy_margin(model, before.prompt_ids, expected) > 1.0, "precondition: bf16-robust"

    unsynced = greedy(colocate_generator)
    assert unsynced.completion_ids == before.completion_ids, "the engine changed before sync_weights()"
    sync(request, colocate_generator)
    after = greedy(colocate_generator)
    assert after.prompt_ids == before.prompt_ids
    assert after.completion_ids == expected
