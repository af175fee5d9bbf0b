"""Fixtures: each expensive thing is owned by one session fixture and built once.

  vllm_model_dir       the model every engine loads (tiny, built offline, cached)
  vllm_backend         the backend under test (imports it: its patches apply)
  colocate_generator   the backend's colocate engine (VLLMGeneration, in-process vLLM)
  vllm_server          a `trl vllm-serve` process on a free port, ready on /health/
  server_client        the backend's VLLMClient connected to it
  vllm_generator       mode-agnostic: the colocate engine or the server client, per `vllm_mode`
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CPU_ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}  # GiB; plenty for the tiny model, the default is 4
MAX_MODEL_LEN = 512
STARTED_SERVERS: list = []  # for log tails in failure reports


def _context(request: pytest.FixtureRequest):
    from .plugin import get_context

    return get_context(request.config)


@pytest.fixture(scope="session")
def vllmcompat_context(request: pytest.FixtureRequest):
    """The run's cell, lane, target and settings (see pytest_vllmcompat.context.Context)."""
    return _context(request)


@pytest.fixture(scope="session")
def vllm_model_dir(vllmcompat_context) -> Path:
    if vllmcompat_context.model is not None:
        return vllmcompat_context.model
    from .models import tiny_model_path

    return tiny_model_path(vllmcompat_context.cache_dir)


@pytest.fixture(scope="session")
def vllm_backend():
    from .backend import Backend

    return Backend.load()


@pytest.fixture(scope="session")
def vllm_engine_host(vllmcompat_context) -> None:
    """Skips (with the exact reason) when this host cannot run an engine of this cell's lane."""
    reason = vllmcompat_context.engine_blocker()
    if reason:
        pytest.skip(reason)
    if vllmcompat_context.lane == "cpu":
        for key, value in CPU_ENGINE_ENV.items():
            os.environ.setdefault(key, value)


@pytest.fixture(scope="session")
def colocate_generator(vllm_engine_host, vllm_backend, vllm_model_dir):
    generator = vllm_backend.make_colocate(str(vllm_model_dir), max_model_length=MAX_MODEL_LEN)
    yield generator
    generator.close()


@pytest.fixture(scope="session")
def vllm_server(vllm_engine_host, vllm_backend, vllm_model_dir, vllmcompat_context, tmp_path_factory):
    from .ports import free_port
    from .server import ServerProcess

    host, port = "127.0.0.1", free_port()
    argv = vllm_backend.serve_argv(str(vllm_model_dir), host=host, port=port, max_model_len=MAX_MODEL_LEN)
    log_dir = tmp_path_factory.mktemp("servers")
    server = ServerProcess(
        "trl vllm-serve",
        argv,
        port=port,
        health_url=f"http://{host}:{port}/health/",
        log_path=log_dir / f"vllm-serve-{port}.log",
        env={**os.environ, **CPU_ENGINE_ENV} if vllmcompat_context.lane == "cpu" else dict(os.environ),
        startup_timeout=vllmcompat_context.startup_timeout,
    )
    STARTED_SERVERS.append(server)
    with server:
        yield server


@pytest.fixture(scope="session")
def server_client(vllm_server, vllm_backend):
    return vllm_backend.make_client(vllm_server.base_url, connection_timeout=10.0)


@pytest.fixture
def vllm_generator(request: pytest.FixtureRequest, vllm_mode: str):
    """The backend in `vllm_mode`: same `generate(prompts, sampling)` either way."""
    return request.getfixturevalue("colocate_generator" if vllm_mode == "colocate" else "server_client")
