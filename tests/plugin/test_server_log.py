"""A trainer run quotes only its own part of the shared server's log (pytest_vllmcompat/testing/server_log.py)."""

from pytest_vllmcompat.testing import server_log

# Shaped as trl vllm-serve on vLLM 0.11.1 logs it (uvicorn, vLLM's engine, TRL's logger), two clients at once:
# 41001's request fails with the TRL 0.29.x RLOO traceback, 42002's with another one, 43003's succeeds.
LOG = """\
INFO:     127.0.0.1:43003 - "POST /chat/ HTTP/1.1" 200 OK
INFO:     127.0.0.1:41001 - "POST /generate/ HTTP/1.1" 500 Internal Server Error
ERROR:    Exception in ASGI application
Traceback (most recent call last):
  File "/env/lib/python3.11/site-packages/uvicorn/protocols/http/httptools_impl.py", line 420, in run_asgi
    result = await app(  # type: ignore[func-returns-value]
fastapi.exceptions.ResponseValidationError: 2 validation errors:
  {'type': 'list_type', 'loc': ('response', 'logprobs'), 'msg': 'Input should be a valid list', 'input': None}

\x1b[1;36m(EngineCore_DP0 pid=6276)\x1b[0;0m INFO 12-04 20:35:50 [core.py:77] an engine line
INFO:     127.0.0.1:42002 - "POST /generate/ HTTP/1.1" 500 Internal Server Error
ERROR:    Exception in ASGI application
Traceback (most recent call last):
ValueError: another client's failure
[Gloo] Rank 0 is connected to 0 peer ranks.
2026-12-04 20:35:52,636 - _logger.py - trl.scripts.vllm_serve - WARNING - a server-wide line
INFO:     127.0.0.1:41001 - "POST /generate/ HTTP/1.1" 500 Internal Server Error
"""


def lines_of_client(log: str, client_ports: set[int]) -> str:
    return "\n".join(server_log.lines_of_client(log.splitlines(), client_ports))


def test_a_client_gets_its_own_requests_their_tracebacks_and_the_server_wide_lines():
    mine = lines_of_client(LOG, {41001})
    assert "ResponseValidationError" in mine and "'loc': ('response', 'logprobs')" in mine
    assert "another client's failure" not in mine and "[Gloo]" not in mine  # in 42002's block
    assert "43003" not in mine and "42002" not in mine
    assert "an engine line" in mine and "a server-wide line" in mine
    assert mine.count('"POST /generate/ HTTP/1.1" 500') == 2


def test_another_client_does_not_get_the_first_ones_traceback():
    theirs = lines_of_client(LOG, {42002})
    assert "ResponseValidationError" not in theirs and "41001" not in theirs
    assert "another client's failure" in theirs and "[Gloo] Rank 0" in theirs


def test_a_client_with_no_connection_gets_only_the_server_wide_lines():
    assert lines_of_client(LOG, set()).splitlines() == [
        "\x1b[1;36m(EngineCore_DP0 pid=6276)\x1b[0;0m INFO 12-04 20:35:50 [core.py:77] an engine line",
        "2026-12-04 20:35:52,636 - _logger.py - trl.scripts.vllm_serve - WARNING - a server-wide line"]
