"""`trl vllm-serve` of TRL 1.11+ (measured on 1.16.0): a wrapper that execs stock `vllm serve` with TRL's settings
(the NCCL weight-transfer engine, processed logprobs, no logprob cap, vLLM's dev endpoints on), printing a
FutureWarning first. Its API is vLLM's own (OpenAI `/v1/*`, `/health`, dev endpoints), not TRL's `/generate/` etc.
(those are tests/compat/test_server_endpoints.py, for the releases that serve them). Generation through
`VLLMClient` (`/v1/completions`, `/v1/chat/completions`) is covered by test_generation.py and test_sampling.py in
server mode; here the server itself: what it runs, what it answers, and that bad requests leave it serving.
"""

import pytest
import requests

from pytest_vllmcompat.backend.settings import MAX_MODEL_LEN
from pytest_vllmcompat.process import procfs
from pytest_vllmcompat.testing.http import NO_PROXY, post_watching
from pytest_vllmcompat.testing.reference import MAX_TOKENS

pytestmark = pytest.mark.vllm_mode("server")
HTTP_TIMEOUT = 60  # s; generous for a 2-core CPU runner
# What TRL 1.16.0's trl/scripts/vllm_serve.py adds to `vllm serve` (its docstring says why each is needed).
TRL_SETTINGS = ["--weight-transfer-config", '{"backend": "nccl"}', "--logprobs-mode", "processed_logprobs",
                "--max-logprobs", "-1"]


@pytest.fixture(autouse=True)
def wrapper(vllm_backend):
    if not vllm_backend.server_is_vllm_serve:
        pytest.skip(f"not applicable: TRL {vllm_backend.version}'s `trl vllm-serve` serves TRL's own endpoints "
                    "(tests/compat/test_server_endpoints.py), not stock `vllm serve`")


def get(server, path, **kw):
    return requests.get(f"{server.base_url}{path}", timeout=HTTP_TIMEOUT, proxies=NO_PROXY, **kw)


def completion(server, model_dir, prompt, max_tokens=2):
    return requests.post(f"{server.base_url}/v1/completions", timeout=HTTP_TIMEOUT, proxies=NO_PROXY,
                         json={"model": str(model_dir), "prompt": prompt, "max_tokens": max_tokens,
                               "temperature": 0.0, "return_token_ids": True})


def test_trl_vllm_serve_execs_vllm_serve_with_trls_settings(vllm_server, vllm_model_dir):
    """The process the harness started as `trl vllm-serve` is now (same pid: os.execve) `python -m
    vllm.entrypoints.cli.main serve MODEL ...` with TRL's settings and VLLM_SERVER_DEV_MODE=1 (the weight-sync
    endpoints /init_weight_transfer_engine, /update_weights, /server_info exist only then)."""
    argv = procfs.cmdline(vllm_server.pid).split()
    assert argv[1:5] == ["-m", "vllm.entrypoints.cli.main", "serve", str(vllm_model_dir)], argv
    joined = " ".join(argv)
    assert " ".join(TRL_SETTINGS) in joined, joined
    assert f"--max-model-len {MAX_MODEL_LEN}" in joined, joined
    assert (procfs.environ(vllm_server.pid) or {}).get("VLLM_SERVER_DEV_MODE") == "1"


def test_trl_vllm_serve_warns_that_it_is_deprecated(vllm_server):
    log = vllm_server.log_path.read_text(errors="replace")
    assert "FutureWarning: `trl vllm-serve` is deprecated and will be removed in v2.0.0: it now only runs vLLM's own " \
           "server." in log


def test_health_world_size_and_models(vllm_server, vllm_model_dir):
    assert get(vllm_server, "/health").status_code == 200
    assert get(vllm_server, "/get_world_size").json() == {"world_size": 1}
    (model,) = get(vllm_server, "/v1/models").json()["data"]
    assert (model["id"], model["max_model_len"]) == (str(vllm_model_dir), MAX_MODEL_LEN)


def test_server_info_names_the_nccl_weight_transfer_engine(server_client):
    """What VLLMClient.init_communicator checks before it joins the server's weight-update group."""
    assert server_client.client.get_server_info()["weight_transfer_config"] == {"backend": "nccl"}


def test_completions_greedy_equals_the_reference(vllm_server, vllm_model_dir, prompt_ids, greedy_reference):
    r = completion(vllm_server, vllm_model_dir, prompt_ids, MAX_TOKENS)
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert [c["prompt_token_ids"] for c in choices] == prompt_ids
    assert [c["token_ids"] for c in choices] == greedy_reference


@pytest.mark.breaks_session_server  # should it not keep serving, no later test depends on it
def test_over_long_prompt_is_400_and_the_server_keeps_serving(vllm_server, vllm_model_dir):
    """vLLM's OpenAI server refuses a prompt longer than max_model_len with 400 and its reason (TRL's own server
    lost its worker on it: test_server_endpoints.py); the next request is answered."""
    length = MAX_MODEL_LEN + 88
    r = post_watching(vllm_server, "/v1/completions", timeout=HTTP_TIMEOUT,
                      json={"model": str(vllm_model_dir), "prompt": [7] * length, "max_tokens": 4})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"] == (
        f"This model's maximum context length is {MAX_MODEL_LEN} tokens. However, you requested 4 output tokens and "
        f"your prompt contains {length} input tokens, for a total of {length + 4} tokens. Please reduce the length of "
        f"the input prompt or the number of requested output tokens. (parameter=input_tokens, value={length})")
    assert len(completion(vllm_server, vllm_model_dir, "Hello").json()["choices"][0]["token_ids"]) == 2


def test_malformed_completion_request_is_400_and_the_server_keeps_serving(vllm_server, vllm_model_dir):
    r = requests.post(f"{vllm_server.base_url}/v1/completions", json={}, timeout=HTTP_TIMEOUT, proxies=NO_PROXY)
    assert r.status_code == 400
    assert "Either prompt or prompt_embeds must be provided and non-empty." in r.json()["error"]["message"]
    assert len(completion(vllm_server, vllm_model_dir, "Hello").json()["choices"][0]["token_ids"]) == 2
