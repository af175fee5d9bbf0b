"""Servers of their own that tests declare (`vllm_early_server`): which the plugin starts at collection end, and
how a fixture claims one (by name; argv must match, else it is stopped and a fresh one started)."""

from __future__ import annotations

import sys
from typing import Any

from pytest_vllmcompat.plugin import selection
from pytest_vllmcompat.plugin.servers import ServerFactory, stop_prestarted
from pytest_vllmcompat.plugin.state import RunState
from pytest_vllmcompat.process.executor import ServerProcess

DECLARING = """
import pytest

pytestmark = pytest.mark.vllm_early_server("float32", extra=("--dtype", "float32"))

def test_one():
    pass

def test_two():
    pass

@pytest.mark.vllm_early_server("other", extra=["--x"])
def test_three():
    pass

@pytest.mark.gpu(n=2)
@pytest.mark.vllm_early_server("needs gpus")
def test_on_gpus():
    pass
"""


def test_each_declared_server_once_in_run_order_and_none_for_a_test_skipped_on_this_lane(pytester):
    pytester.makepyfile(test_declaring=DECLARING)
    items, _ = pytester.inline_genitems("-p", "no:cacheprovider")
    # get_closest_marker: test_three's own marker wins over the module's
    assert selection.early_servers(items, "cpu") == [("float32", ("--dtype", "float32")), ("other", ("--x",))]


def server(name: str, argv: list[str], port: int = 1234, log_path: Any = "unused.log") -> ServerProcess:
    return ServerProcess(name, argv, port=port, health_url=f"http://127.0.0.1:{port}/health/", log_path=log_path)


def factory_with(*prestarted: ServerProcess) -> ServerFactory:
    run = RunState(context=None)  # type: ignore[arg-type]  # claiming reads no context
    for s in prestarted:
        run.register(s)
    run.prestarted.extend(prestarted)
    return ServerFactory(run, None)  # type: ignore[arg-type]


def argv_for(*extra: str) -> Any:
    return lambda host, port: [sys.executable, "serve", "--port", str(port), *extra]


def test_a_fixture_claims_the_early_server_of_its_name_and_leaves_the_others():
    session = server("trl vllm-serve", argv_for()("127.0.0.1", 1234))
    float32 = server("float32", argv_for("--dtype", "float32")("127.0.0.1", 1235), port=1235)
    factory = factory_with(session, float32)
    assert factory._claim_prestarted("float32", argv_for("--dtype", "float32")) is float32
    assert factory.state.prestarted == [session]
    assert factory._claim_prestarted("float32", argv_for("--dtype", "float32")) is None  # claimed once


def test_an_early_server_whose_arguments_differ_is_dropped_not_claimed():
    float32 = server("float32", argv_for("--dtype", "float32")("127.0.0.1", 1235), port=1235)
    factory = factory_with(float32)
    assert factory._claim_prestarted("float32", argv_for("--dtype", "bfloat16")) is None
    assert factory.state.prestarted == [] and float32 not in factory.state.servers


def test_unclaimed_early_servers_are_all_stopped_at_the_end(tmp_path):
    started = []
    for port in (0, 1):
        s = server(f"s{port}", [sys.executable, "-c", "import time; time.sleep(60)"], port=port,
                   log_path=tmp_path / f"s{port}.log")
        s.start()
        started.append(s)
    run = RunState(context=None)  # type: ignore[arg-type]
    run.prestarted.extend(started)
    stop_prestarted(run)
    assert run.prestarted == [] and all(not s.alive for s in started)
