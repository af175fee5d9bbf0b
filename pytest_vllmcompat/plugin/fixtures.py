"""Fixtures: each expensive thing is owned by one session fixture and built once.

  vllmcompat_context    the run's cell, lane, target and settings
  vllm_server_factory   the one way to start servers (ServerFactory): session server, disposable ones, GPU ones
  vllm_model_dir        the model every engine loads (tiny, built offline, cached)
  vllm_backend          the backend under test (imports it: its patches apply)
  vllm_engine_host      skips, with the exact reason, when this host cannot run an engine of the cell
  colocate_generator    the backend's colocate engine (VLLMGeneration, in-process vLLM)
  vllm_server           the session's `trl vllm-serve` on a free port, ready on /health/
  server_client         the backend's VLLMClient connected to it
  vllm_generator        mode-agnostic: the colocate engine or the server client, per `vllm_mode`
  (autouse)             at the first engine test (or the session server's first user), starts the background work
                        that tests marked `vllm_background("fixture")` wait on (the named session fixtures)

Override one by defining a fixture of the same name in your conftest.py.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..backend import settings as engine
from ..process.executor import ServerProcess
from . import recorded, selection, state
from .context import Context
from .servers import ServerFactory, model_dir

__all__ = ["colocate_generator", "server_client", "start_background_work", "vllm_backend",
           "vllm_engine_host", "vllm_generator", "vllm_model_dir", "vllm_server", "vllm_server_factory",
           "vllmcompat_context"]


@pytest.fixture(scope="session")
def vllmcompat_context(request: pytest.FixtureRequest) -> Context:
    """The run's cell, lane, target and settings (see pytest_vllmcompat.plugin.context.Context)."""
    return state.of(request.config).context


@pytest.fixture(scope="session")
def vllm_server_factory(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ServerFactory:
    """Starts servers (`start` for any command, `vllm_serve` for the backend's) that stop when their block exits
    and whose log tails go into failing tests' reports."""
    return ServerFactory(state.of(request.config), tmp_path_factory)


@pytest.fixture(scope="session")
def vllm_model_dir(vllmcompat_context: Context) -> Path:
    return model_dir(vllmcompat_context)


@pytest.fixture(scope="session")
def vllm_backend() -> Any:
    from ..backend import Backend

    return Backend.load()


@pytest.fixture(scope="session")
def vllm_engine_host(vllmcompat_context: Context) -> None:
    """Skips (with the exact reason) when this host cannot run an engine of this cell's lane."""
    reason = vllmcompat_context.engine_blocker()
    if reason:
        pytest.skip(reason)
    for key, value in engine.engine_env(vllmcompat_context.lane).items():
        os.environ.setdefault(key, value)


@pytest.fixture(scope="session")
def colocate_generator(request: pytest.FixtureRequest, vllm_engine_host: None, vllm_backend: Any,
                       vllm_model_dir: Path, vllmcompat_context: Context) -> Iterator[Any]:
    started = time.monotonic()
    generator = vllm_backend.make_colocate(str(vllm_model_dir), max_model_length=engine.MAX_MODEL_LEN,
                                           **engine.colocate_memory(vllmcompat_context.lane))
    state.record_startup(request.config, "colocate_engine", time.monotonic() - started)
    yield generator
    generator.close()


@pytest.fixture(scope="session")
def vllm_server(request: pytest.FixtureRequest, vllm_engine_host: None, vllm_backend: Any,
                vllm_server_factory: ServerFactory) -> Iterator[ServerProcess]:
    with vllm_server_factory.vllm_serve(claim_prestarted=True) as server:
        state.record_startup(request.config, "server", server.startup_seconds)
        yield server


@pytest.fixture(scope="session")
def server_client(vllm_server: ServerProcess, vllm_backend: Any) -> Any:
    return vllm_backend.make_client(vllm_server.base_url, connection_timeout=10.0)


@pytest.fixture
def vllm_generator(request: pytest.FixtureRequest, vllm_mode: str) -> Any:
    """The backend in `vllm_mode`: same `generate(prompts, sampling)` either way."""
    return request.getfixturevalue("colocate_generator" if vllm_mode == "colocate" else "server_client")


@pytest.fixture
def vllm_lane_substitute(request: pytest.FixtureRequest) -> Any:
    """declare(what): this test replaced a piece the lane cannot run (see testing/lane_substitutes.py); reported."""
    return recorded.substitution_declarer(request.node)


@pytest.fixture
def vllm_measure(request: pytest.FixtureRequest) -> Any:
    """measure(name, value): a number this test's tolerance is derived from; kept in the results."""
    return recorded.measurer(request.node)


@pytest.fixture(autouse=True)
def start_background_work(request: pytest.FixtureRequest) -> None:
    """At the first test of the group a selected test's `vllm_background` marker names (selection.BESIDE: the
    engine tests, or the session server's users), or of a later group when that one has no test: request the
    named session fixture, which starts its work without waiting for it, so that the work runs beside that group
    and the ones after it. Such a fixture's error is not this test's: pytest keeps it and raises it again in the
    tests that wait on that fixture. A name no fixture visible here has is the suite's bug, raised here (the
    fixture must be visible to every module: a conftest.py or a plugin)."""
    if not state.has_state(request.config):
        return
    run = state.of(request.config)
    if not run.background:
        return
    group = selection.group(request.node, run.context.lane)
    due = [name for name, start in run.background if start <= group]
    run.background = [(name, start) for name, start in run.background if start > group]
    for name in due:
        try:
            request.getfixturevalue(name)
        except pytest.FixtureLookupError:
            raise
        except (Exception, pytest.skip.Exception, pytest.fail.Exception):
            pass
