"""`trl vllm-serve` endpoints over raw HTTP and through `VLLMClient`: which routes the server serves, health, world
size, prefix-cache reset, TRL 0.28.0's `/tokenize` and `/v1/chat/completions`, request validation, over-long
prompts, and the client's behaviour when nothing listens.

Raw HTTP uses a fresh connection per request (`requests.post`, not a Session): after a 500 uvicorn closes the
connection, and a pooled keep-alive connection would then fail with ConnectionResetError on reuse.
"""

import time

import pytest
import requests

from pytest_vllmcompat.backend.settings import MAX_MODEL_LEN
from pytest_vllmcompat.testing import reference
from pytest_vllmcompat.testing.http import NO_PROXY, post_watching
from pytest_vllmcompat.testing.reference import CONVERSATIONS, MAX_TOKENS

pytestmark = pytest.mark.vllm_mode("server")

@pytest.fixture(autouse=True)
def trl_endpoints(request, vllm_backend):
    """The tests of a server here are TRL's own endpoints; TRL 1.11+ runs stock `vllm serve` instead. (The client
    test without a server applies to every release.)"""
    uses_a_server = "vllm_server" in request.fixturenames
    if uses_a_server and vllm_backend.server_is_vllm_serve:
        pytest.skip(f"not applicable: TRL {vllm_backend.version}'s `trl vllm-serve` execs stock `vllm serve` (no TRL "
                    "endpoints): tests/compat/test_vllm_serve_wrapper.py tests that server")


HTTP_TIMEOUT = 60  # s; generous for a 2-core CPU runner, the calls below take well under a second unloaded
BREAKING_TIMEOUT = 120  # s; last resort for a request that may break the server (post_watching fails sooner)


def get(server, path):
    return requests.get(f"{server.base_url}{path}", timeout=HTTP_TIMEOUT, proxies=NO_PROXY)


def post(server, path, timeout=HTTP_TIMEOUT, **kw):
    return requests.post(f"{server.base_url}{path}", timeout=timeout, proxies=NO_PROXY, **kw)


def assert_serving(server):
    assert get(server, "/health/").json() == {"status": "ok"}
    r = post(server, "/generate/", json={"prompts": ["Hello"], "temperature": 0.0, "max_tokens": 2})
    assert r.status_code == 200, r.text
    assert len(r.json()["completion_ids"][0]) == 2


# Every route a `trl vllm-serve` of TRL 0.28.0-0.29.1 serves, and where it is tested. A route missing here fails
# test_every_served_route_is_tested: a backend release that adds an endpoint gets a test before the matrix is green.
TESTED_ROUTES = {
    "/health/": "test_health, test_client_health_check_and_reset_prefix_cache",
    "/get_world_size/": "test_world_size",
    "/generate/": "test_generation.py and test_sampling.py (server mode), the request tests below",
    "/chat/": "test_sampling.py::test_chat_prompts_use_the_chat_template[server]",
    "/reset_prefix_cache/": "test_reset_prefix_cache, test_client_health_check_and_reset_prefix_cache",
    "/init_communicator/": "test_gpu.py::test_server_weight_sync_over_nccl (CUDA lane)",
    "/update_named_param/": "test_gpu.py::test_server_weight_sync_over_nccl (CUDA lane)",
    "/close_communicator/": "test_gpu.py::test_server_weight_sync_over_nccl (CUDA lane)",
    "/tokenize": "test_tokenize_applies_the_chat_template (TRL 0.28.0 only)",
    "/v1/chat/completions": "test_openai_chat_completions_greedy (TRL 0.28.0 only)",
}
FASTAPI_ROUTES = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}  # FastAPI's own, not TRL's


def openapi(server) -> dict:
    """The server's own description of its routes and request schemas (FastAPI's /openapi.json)."""
    r = get(server, "/openapi.json")
    assert r.status_code == 200, r.text
    return r.json()


def served_routes(server) -> set[str]:
    return set(openapi(server)["paths"]) - FASTAPI_ROUTES


def require_route(server, backend, route: str) -> None:
    """Endpoints only some TRL releases serve: their tests do not apply to the others."""
    if route not in served_routes(server):
        pytest.skip(f"not applicable: `trl vllm-serve` of TRL {backend.version} does not serve {route} "
                    "(TRL 0.28.0 does; removed in 0.29.0)")


def test_every_served_route_is_tested(vllm_server):
    routes = served_routes(vllm_server)
    assert routes - set(TESTED_ROUTES) == set(), "untested routes: add tests and list them in TESTED_ROUTES"
    core = {r for r, where in TESTED_ROUTES.items() if "only)" not in where}
    assert core - routes == set(), "routes TRL 0.28.0-0.29.1 all serve are missing"


def test_health(vllm_server):
    r = get(vllm_server, "/health/")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})


def test_world_size(vllm_server):
    r = get(vllm_server, "/get_world_size/")
    assert (r.status_code, r.json()) == (200, {"world_size": 1})  # tensor_parallel_size 1 x data_parallel_size 1


def test_reset_prefix_cache(vllm_server):
    r = post(vllm_server, "/reset_prefix_cache/")
    assert r.status_code == 200
    assert r.json()["message"].startswith("Request received, resetting prefix cache status: ")


def test_client_health_check_and_reset_prefix_cache(server_client):
    server_client.client.check_server(total_timeout=5)  # returns once /health/ answers 200
    server_client.reset_prefix_cache()  # raises on a non-200 answer
    assert server_client.health() == 200


def test_tokenize_applies_the_chat_template(vllm_server, vllm_backend, reference_model):
    require_route(vllm_server, vllm_backend, "/tokenize")
    _, tokenizer = reference_model
    for conversation in CONVERSATIONS:
        r = post(vllm_server, "/tokenize", json={"messages": conversation})
        assert r.status_code == 200, r.text
        assert r.json()["tokens"] == reference.chat_prompt_ids(tokenizer, conversation)


def test_openai_chat_completions_greedy(vllm_server, vllm_backend, reference_model):
    """The OpenAI-style endpoint at temperature 0: the transformers greedy continuation of the chat template."""
    require_route(vllm_server, vllm_backend, "/v1/chat/completions")
    model, tokenizer = reference_model
    conversation = CONVERSATIONS[1]
    prompt = reference.chat_prompt_ids(tokenizer, conversation)
    expected = reference.greedy(model, tokenizer, [prompt], MAX_TOKENS)[0]
    r = post(vllm_server, "/v1/chat/completions",
             json={"messages": conversation, "temperature": 0.0, "max_tokens": MAX_TOKENS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": len(expected),
                             "total_tokens": len(prompt) + len(expected)}
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == tokenizer.decode(expected, skip_special_tokens=True)


def accepts_token_ids(server) -> bool:
    """TRL 0.29.1 declares `prompts: list[str] | list[list[int]]`, 0.28.0 and 0.29.0 `list[str]` (its OpenAPI schema)."""
    return "anyOf" in openapi(server)["components"]["schemas"]["GenerateRequest"]["properties"]["prompts"]


def prompts_error_loc(server) -> list[str]:
    """Where pydantic locates an error in `prompts`: with a union type it names the member it tried first. TRL
    0.29.1 declares `prompts: list[str] | list[list[int]]` (token-id prompts), 0.28.0 and 0.29.0 `list[str]`;
    the server's own OpenAPI schema says which one this is."""
    return ["body", "prompts", "list[str]"] if accepts_token_ids(server) else ["body", "prompts"]


@pytest.mark.parametrize("body, error", [
    ({}, {"type": "missing", "loc": ["body", "prompts"], "msg": "Field required", "input": {}}),
    ({"prompts": "Hello"}, {"type": "list_type", "loc": None,  # None: prompts_error_loc(server)
                            "msg": "Input should be a valid list", "input": "Hello"}),
    ({"prompts": ["Hello"], "n": "two"}, {"type": "int_parsing", "loc": ["body", "n"],
                                          "msg": "Input should be a valid integer, unable to parse string as an integer",
                                          "input": "two"}),
], ids=["missing-prompts", "prompts-not-a-list", "n-not-an-int"])
def test_malformed_generate_request_is_422_and_the_server_keeps_serving(vllm_server, body, error):
    if error["loc"] is None:
        error = {**error, "loc": prompts_error_loc(vllm_server)}
    r = post(vllm_server, "/generate/", json=body)
    assert r.status_code == 422
    assert r.json()["detail"][0] == error
    assert_serving(vllm_server)


@pytest.mark.breaks_session_server  # runs after every other test: the session server's last user
def test_over_long_prompt_is_an_error_and_the_server_keeps_serving(vllm_server):
    """A prompt longer than max_model_len: vLLM's input processor raises ValueError ("The decoder prompt (length
    N) is longer than the maximum model length of 512. ...") in the server's LLM worker process. Expected of a
    server: an error answer (500, as for other exceptions in the endpoint) and then business as usual. Should the
    worker die instead, post_watching fails within a second, quoting its error, instead of waiting out a timeout.
    Sent to the session server after all its other users have run (the marker; a server of its own would cost a
    start-up of ~60 s on these CPUs for the same argv)."""
    # Token ids where the server takes them (TRL 0.29.1), else a text that tokenizes to far more than 512 tokens.
    too_long = [7] * (MAX_MODEL_LEN + 88) if accepts_token_ids(vllm_server) else "Hello " * (MAX_MODEL_LEN + 88)
    r = post_watching(vllm_server, "/generate/", timeout=BREAKING_TIMEOUT,
                      json={"prompts": [too_long], "max_tokens": 4})
    assert r.status_code == 500, f"answered {r.status_code}: {r.text[:300]}"
    assert_serving(vllm_server)


def test_client_without_server_raises_connection_error_after_the_timeout(vllm_backend):
    """VLLMClient polls /health/ every 2 s until `connection_timeout` has passed, then raises. With 2 s: one
    refused attempt at t=0, sleep 2 s, a second refused attempt, raise (measured 2.0 s).

    The exception is `requests.exceptions.ConnectionError` (vllm_client.py does `from requests import
    ConnectionError`), which is NOT the builtin `ConnectionError` the docstring suggests: `except
    ConnectionError:` in user code does not catch it; `except OSError` / `requests.RequestException` do."""
    from trl.generation.vllm_client import VLLMClient

    from pytest_vllmcompat.process.ports import free_port

    port = free_port("127.0.0.1")
    base_url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ConnectionError) as info:
        VLLMClient(base_url=base_url, connection_timeout=2)
    elapsed = time.monotonic() - started
    print(f"VLLMClient(connection_timeout=2) without a server raised after {elapsed:.3f} s")
    assert type(info.value) is requests.exceptions.ConnectionError
    assert not isinstance(info.value, ConnectionError)  # the builtin
    command = "vllm serve" if vllm_backend.server_is_vllm_serve else "trl vllm-serve"  # what the release runs
    assert str(info.value) == (f"The vLLM server can't be reached at {base_url} after 2 seconds. Make sure the "
                               f"server is running by running `{command}`.")
    assert isinstance(info.value.__cause__, requests.exceptions.ConnectionError)
    assert 2.0 <= elapsed <= 2.0 + 1.5, f"raised after {elapsed:.2f} s"
