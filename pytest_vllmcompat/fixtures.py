"""Fixtures: each expensive thing is owned by one session fixture and built once.

  vllm_model_dir       the model every engine loads (tiny, built offline, cached)
  vllm_backend         the backend under test (imports it: its patches apply)
  colocate_generator   the backend's colocate engine (VLLMGeneration, in-process vLLM)
  vllm_server          a `trl vllm-serve` process on a free port, ready on /health/
  server_client        the backend's VLLMClient connected to it
  vllm_generator       mode-agnostic: the colocate engine or the server client, per `vllm_mode`
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest

from .results import record_startup

CPU_ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}  # GiB; plenty for the tiny model, the default is 4
MAX_MODEL_LEN = 512
# CUDA lane: the session's colocate engine and server share the first GPU (and the GPU-only tests add engines
# of their own), so neither may take TRL's default 0.9 of its memory. The tiny model needs very little.
# Ignored on the CPU lane, where VLLM_CPU_KVCACHE_SPACE sizes the cache.
CUDA_SESSION_MEMORY = 0.25


def _colocate_memory(lane: str) -> dict:
    return {"gpu_memory_utilization": CUDA_SESSION_MEMORY} if lane == "cuda" else {}


def _server_extra(lane: str) -> list[str]:
    return ["--gpu_memory_utilization", str(CUDA_SESSION_MEMORY)] if lane == "cuda" else []
STARTED_SERVERS: list = []  # for log tails in failure reports
SERVER_FIXTURES: set[str] = {"vllm_server"}  # a failing test using one of these gets the servers' log tails
PORT_ATTEMPTS = 3  # a free port can be taken between free_port() and the server's bind: retry with a new one


@contextlib.contextmanager
def running_server(request: pytest.FixtureRequest, name: str, argv_for: Callable[[str, int], Sequence[str]], *,
                   log_dir: str | os.PathLike, startup_timeout: float, env: Mapping[str, str] | None = None,
                   host: str = "127.0.0.1", health_path: str = "/health/", prestarted=None,
                   fatal_log_patterns: Sequence[str] = ()):
    """Run `argv_for(host, port)` on a free port as a ServerProcess until the block exits: the code path of
    `vllm_server`, reusable by fixtures starting other servers (the plugin's own tests start a tiny one).

    Registers the server so failing tests using `request.fixturename` get its log tail, retries on a new port
    when the server died with "address already in use", and stops the whole process group on exit
    (including KeyboardInterrupt, which is also what SIGTERM to pytest becomes).

    `prestarted`: a ServerProcess already start()ed (see `prestart_server`); it is the first attempt, so its
    failures are reported exactly like those of a server started here."""
    from .server import ServerStartupError

    SERVER_FIXTURES.add(request.fixturename)
    for attempt in range(1, PORT_ATTEMPTS + 1):
        if attempt == 1 and prestarted is not None:
            server = prestarted  # started in the background at collection end: only wait for readiness
        else:
            server = new_server(name, argv_for, log_dir=log_dir, startup_timeout=startup_timeout, env=env,
                                host=host, health_path=health_path, fatal_log_patterns=fatal_log_patterns)
        try:
            _start_and_wait(server)  # stops the server on any failure, KeyboardInterrupt included
        except ServerStartupError as exc:
            if not exc.address_in_use or attempt == PORT_ATTEMPTS:
                raise
            STARTED_SERVERS.remove(server)  # port lost to another process between probe and bind: new port
            continue
        break
    try:
        yield server
    finally:
        server.stop()


def new_server(name: str, argv_for: Callable[[str, int], Sequence[str]], *, log_dir: str | os.PathLike,
               startup_timeout: float, env: Mapping[str, str] | None = None, host: str = "127.0.0.1",
               health_path: str = "/health/", fatal_log_patterns: Sequence[str] = ()):
    """A ServerProcess (not started) for `argv_for(host, port)` on a free port, logging into `log_dir`,
    registered so that failing tests get its log tail."""
    from .ports import free_port
    from .server import ServerProcess

    port = free_port(host)
    server = ServerProcess(name, argv_for(host, port), port=port, health_url=f"http://{host}:{port}{health_path}",
                           log_path=os.path.join(log_dir, f"{'-'.join(name.split())}-{port}.log"), env=env,
                           startup_timeout=startup_timeout, fatal_log_patterns=fatal_log_patterns)
    STARTED_SERVERS.append(server)
    return server


def _start_and_wait(server) -> None:
    """ServerProcess.__enter__, for a server that may already have been started."""
    if server.proc is None:
        server.start()
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise


# --- early start of the session's server (issue #7) ---
# `trl vllm-serve` takes ~40 s to answer /health/ on CPU. When the selected tests need both a colocate engine
# and a server, the plugin starts the server at collection end (`prestart_server`) so its startup overlaps the
# colocate engine build and tests; `vllm_server` then only waits for readiness. The prestarted server is exactly
# what `vllm_server` would start (same argv, env, log dir, timeout): if anything differs when the fixture runs
# it is stopped and a fresh one is started. Unused (e.g. `-x` stopped the run), it is stopped at unconfigure.
PRESTART_ENV = "VLLMCOMPAT_PRESTART"  # "0" disables the early start
SERVER_NAME = "trl vllm-serve"
_PRESTARTED: dict = {}  # "server" -> ServerProcess started early, not yet claimed by vllm_server


def _server_env(ctx) -> dict[str, str]:
    return dict(CPU_ENGINE_ENV) if ctx.lane == "cpu" else {}  # on top of childenv.child_env()


def _model_dir(ctx) -> Path:
    if ctx.model is not None:
        return ctx.model
    from .models import tiny_model_path

    return tiny_model_path(ctx.cache_dir)


def prestart_server(config: pytest.Config, ctx) -> bool:
    """Start the session's `trl vllm-serve` now, without waiting. Best effort: on any problem nothing is started
    here (a PytestWarning says why) and `vllm_server` starts (and reports) as it always did. Returns whether a
    server was started."""
    import importlib.util

    from .backend import SERVE_FATAL_LOG_PATTERNS, serve_argv

    try:
        spec = importlib.util.find_spec("trl")  # trl's location without importing it (its patches apply later)
        if spec is None or spec.origin is None:
            return False
        trl_location, model = os.path.dirname(spec.origin), str(_model_dir(ctx))
        server = new_server(
            SERVER_NAME,
            lambda host, port: serve_argv(trl_location, model, host=host, port=port, max_model_len=MAX_MODEL_LEN,
                                          extra=_server_extra(ctx.lane)),
            log_dir=config._tmp_path_factory.mktemp("servers"), startup_timeout=ctx.startup_timeout,
            env=_server_env(ctx), fatal_log_patterns=SERVE_FATAL_LOG_PATTERNS,
        )
        server.start()
    except Exception as exc:
        warnings.warn(pytest.PytestWarning(f"early start of {SERVER_NAME} skipped ({type(exc).__name__}: {exc}); "
                                           "the vllm_server fixture starts it when a test needs it"))
        return False
    _PRESTARTED["server"] = server
    return True


def _claim_prestarted(expected_argv_for: Callable[[str, int], Sequence[str]]):
    """The prestarted server if it is the one `vllm_server` would start, else None (a mismatch is stopped)."""
    server = _PRESTARTED.pop("server", None)
    if server is None:
        return None
    if list(map(str, expected_argv_for("127.0.0.1", server.port))) != server.argv:
        server.stop()
        STARTED_SERVERS.remove(server)
        return None
    return server


def stop_prestarted() -> None:
    """Stop a prestarted server no test claimed (session ended early, interrupted, or deselected)."""
    server = _PRESTARTED.pop("server", None)
    if server is not None:
        server.stop()


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
def colocate_generator(vllm_engine_host, vllm_backend, vllm_model_dir, vllmcompat_context):
    started = time.monotonic()
    generator = vllm_backend.make_colocate(str(vllm_model_dir), max_model_length=MAX_MODEL_LEN,
                                           **_colocate_memory(vllmcompat_context.lane))
    record_startup("colocate_engine", time.monotonic() - started)
    yield generator
    generator.close()


@pytest.fixture(scope="session")
def vllm_server(request, vllm_engine_host, vllm_backend, vllm_model_dir, vllmcompat_context, tmp_path_factory):
    with vllm_serve(request, vllm_backend, vllm_model_dir, vllmcompat_context,
                    log_dir=tmp_path_factory.mktemp("servers"), claim_prestarted=True) as server:
        record_startup("server", server.startup_seconds)
        yield server


@contextlib.contextmanager
def vllm_serve(request, backend, model_dir, ctx, *, log_dir, name: str = SERVER_NAME, claim_prestarted=False):
    """The backend's `trl vllm-serve` on the model, configured for the lane, running until the block exits.
    The session's `vllm_server` uses it; so can tests that need a server of their own (one they may break)."""
    from .backend import SERVE_FATAL_LOG_PATTERNS

    def argv(host: str, port: int) -> list[str]:
        return backend.serve_argv(str(model_dir), host=host, port=port, max_model_len=MAX_MODEL_LEN,
                                  extra=_server_extra(ctx.lane))

    with running_server(request, name, argv, log_dir=log_dir, env=_server_env(ctx),
                        startup_timeout=ctx.startup_timeout, fatal_log_patterns=SERVE_FATAL_LOG_PATTERNS,
                        prestarted=_claim_prestarted(argv) if claim_prestarted else None) as server:
        yield server


@pytest.fixture(scope="session")
def server_client(vllm_server, vllm_backend):
    return vllm_backend.make_client(vllm_server.base_url, connection_timeout=10.0)


@pytest.fixture
def vllm_generator(request: pytest.FixtureRequest, vllm_mode: str):
    """The backend in `vllm_mode`: same `generate(prompts, sampling)` either way."""
    return request.getfixturevalue("colocate_generator" if vllm_mode == "colocate" else "server_client")
