"""The one way the plugin starts servers: `ServerFactory`, handed to tests as the `vllm_server_factory` fixture.

The session's `trl vllm-serve`, disposable servers a test may break, servers with other arguments (float32,
GPU-pinned) and any other HTTP server a fixture needs all go through `ServerFactory.start`: a free port (a new
one when the chosen port was taken before the bind), readiness on the health URL, fatal log lines, the log tail
in failing tests' reports, and the whole process group stopped when the block exits (KeyboardInterrupt, which
SIGTERM to pytest becomes, included; a watchdog stops it if this process is SIGKILLed).

Early start (`prestart`): `trl vllm-serve` takes ~40 s to answer /health/ on CPU. When the selected tests need a
server, the plugin starts the session's one at collection end, so its startup overlaps the colocate engine build
and the tests before it; `vllm_serve(claim_prestarted=True)` then only waits for readiness. The early server is
exactly what the fixture would start (same argv, env, log dir, timeout); if anything differs it is stopped and a
fresh one is started. Unclaimed (e.g. `-x` stopped the run), it is stopped at unconfigure.
On the CPU lane, a server of other arguments that selected tests declare (marker `vllm_early_server(name,
extra=...)`, e.g. the float32 server of the structured-output tests) starts at collection end too, and
`vllm_serve(name=..., extra=..., claim_prestarted=True)` claims it by name the same way. Not on the CUDA lane:
two servers starting on one GPU at once profile its free memory at the same time, which has not been measured.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from ..backend import settings as engine
from ..backend.serve import SERVE_FATAL_LOG_PATTERNS, installed_trl_location, serve_argv
from ..process import ports
from ..process.executor import ServerProcess, start_on_free_port
from ..testing.models import tiny_model_path
from .context import Context
from .state import RunState

SERVER_NAME = "trl vllm-serve"
PRESTART_ENV = "VLLMCOMPAT_PRESTART"  # "0" disables the early start
ArgvFor = Callable[[str, int], Sequence[str]]


class ServerFactory:
    def __init__(self, state: RunState, tmp_path_factory: pytest.TempPathFactory):
        self.state, self.tmp_path_factory = state, tmp_path_factory
        self._log_dir: Path | None = None

    @property
    def log_dir(self) -> Path:
        """One directory for the logs of every server of this run (created on first use)."""
        if self._log_dir is None:
            self._log_dir = self.tmp_path_factory.mktemp("servers")
        return self._log_dir

    def new(self, name: str, argv_for: ArgvFor, port: int, *, host: str = "127.0.0.1",
            health_path: str = "/health/", env: Mapping[str, str] | None = None,
            startup_timeout: float | None = None, fatal_log_patterns: Sequence[str] = (),
            log_dir: str | os.PathLike | None = None) -> ServerProcess:
        """A ServerProcess (not started) for `argv_for(host, port)`, registered for failure reports."""
        server = ServerProcess(name, argv_for(host, port), port=port, health_url=f"http://{host}:{port}{health_path}",
                               log_path=Path(log_dir or self.log_dir) / f"{'-'.join(name.split())}-{port}.log",
                               env=env, startup_timeout=startup_timeout or self.state.context.startup_timeout,
                               fatal_log_patterns=fatal_log_patterns)
        self.state.register(server)
        return server

    @contextlib.contextmanager
    def start(self, name: str, argv_for: ArgvFor, *, host: str = "127.0.0.1", health_path: str = "/health/",
              env: Mapping[str, str] | None = None, startup_timeout: float | None = None,
              fatal_log_patterns: Sequence[str] = (), log_dir: str | os.PathLike | None = None,
              first: ServerProcess | None = None) -> Iterator[ServerProcess]:
        """Run `argv_for(host, port)` on a free port, ready, until the block exits. `first`: a server already
        start()ed for this (the early start), tried before a new one."""
        def make(port: int) -> ServerProcess:
            return self.new(name, argv_for, port, host=host, health_path=health_path, env=env,
                            startup_timeout=startup_timeout, fatal_log_patterns=fatal_log_patterns, log_dir=log_dir)

        server = start_on_free_port(make, host=host, first=first, discard=self.state.forget)
        try:
            yield server
        finally:
            server.stop()

    # --- the backend's `trl vllm-serve` ---

    def vllm_argv_for(self, extra: Sequence[str] = (), gpu_memory_utilization: float | None = None) -> ArgvFor:
        """argv of the backend's `trl vllm-serve` on the run's model, as the lane needs it."""
        location = installed_trl_location()
        if location is None:
            raise RuntimeError("trl is not installed in this environment: no `trl vllm-serve` to start")
        model = str(model_dir(self.state.context))
        memory = engine.server_memory_args(self.state.context.lane, gpu_memory_utilization)

        def argv(host: str, port: int) -> list[str]:
            return serve_argv(location, model, host=host, port=port, max_model_len=engine.MAX_MODEL_LEN,
                              extra=[*memory, *extra])
        return argv

    @contextlib.contextmanager
    def vllm_serve(self, *, name: str = SERVER_NAME, extra: Sequence[str] = (), env: Mapping[str, str] | None = None,
                   gpu_memory_utilization: float | None = None, startup_timeout: float | None = None,
                   log_dir: str | os.PathLike | None = None, claim_prestarted: bool = False) -> Iterator[ServerProcess]:
        """The backend's `trl vllm-serve` on the model, configured for the lane, running until the block exits."""
        argv_for = self.vllm_argv_for(extra, gpu_memory_utilization)
        full_env = {**engine.engine_env(self.state.context.lane), **(env or {})}
        first = self._claim_prestarted(name, argv_for) if claim_prestarted else None
        with self.start(name, argv_for, env=full_env, startup_timeout=startup_timeout, log_dir=log_dir,
                        fatal_log_patterns=SERVE_FATAL_LOG_PATTERNS, first=first) as server:
            yield server

    def prestart(self, name: str = SERVER_NAME, extra: Sequence[str] = ()) -> bool:
        """Start `trl vllm-serve` (the session's, or `name` with `extra` arguments) now, without waiting. Best effort:
        on any problem nothing is started (a PytestWarning says why) and the fixture that claims it starts and
        reports it as usual."""
        try:
            argv_for = self.vllm_argv_for(extra)
            server = self.new(name, argv_for, ports.late_bind_port(), env=engine.engine_env(
                self.state.context.lane), fatal_log_patterns=SERVE_FATAL_LOG_PATTERNS)
            server.start()
            server.time_readiness_in_background()  # its start-up, not the wait until a test claims it
        except Exception as exc:
            warnings.warn(pytest.PytestWarning(f"early start of {name} skipped ({type(exc).__name__}: {exc}); "
                                               "the fixture that needs it starts it then"), stacklevel=2)
            return False
        self.state.prestarted.append(server)
        return True

    def _claim_prestarted(self, name: str, expected_argv_for: ArgvFor) -> ServerProcess | None:
        """The early server of this name if it is the one that would be started now, else None (a mismatch is
        stopped)."""
        server = next((s for s in self.state.prestarted if s.name == name), None)
        if server is None:
            return None
        self.state.prestarted.remove(server)
        if list(map(str, expected_argv_for("127.0.0.1", server.port))) != server.argv:
            server.stop()
            self.state.forget(server)
            return None
        return server


def stop_prestarted(state: RunState) -> None:
    """Stop the early servers no test claimed (session ended early, interrupted, or deselected)."""
    servers, state.prestarted = state.prestarted, []
    for server in servers:
        server.stop()


def model_dir(ctx: Context) -> Path:
    """The model every engine of the run loads: --vllm-model, else the built-in tiny model (built once)."""
    return ctx.model if ctx.model is not None else tiny_model_path(ctx.cache_dir)
