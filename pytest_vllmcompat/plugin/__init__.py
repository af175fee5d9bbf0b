"""pytest11 entry point: hooks of a few lines each, and the fixtures (plugin/fixtures.py).

The pieces live next to this file: settings (options and their precedence), context (which cell this is),
state (the run's state in config.stash), selection (modes, known failures, GPU requirements), servers (the
server factory and the early start), results (the JSON result). Nothing heavy (torch, vLLM, transformers,
the backend) is imported here.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Generator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from .. import host
from ..process import childenv
from ..process.compile_cache import COMPILE_CACHE_VARS, compile_cache_env
from ..process.sweep import sweep_leftovers
from ..process.vec_isa import VEC_ISA_ENV, vec_isa_env
from . import known_failures, selection, settings, skips, state
from .context import build as build_context
from .fixtures import (  # noqa: F401  (fixtures are registered by being in this module)
    colocate_generator,
    server_client,
    start_background_work,
    vllm_backend,
    vllm_engine_host,
    vllm_generator,
    vllm_lane_substitute,
    vllm_measure,
    vllm_model_dir,
    vllm_server,
    vllm_server_factory,
    vllmcompat_context,
)
from .results import ResultsWriter, StartupRelay
from .servers import PRESTART_ENV, ServerFactory, stop_prestarted

MARKERS = (
    "vllm_mode(name): the test exercises this backend mode (colocate or server)",
    "smoke: one generation test per mode; what the benchmark times",
    "gpu(n=1): needs n NVIDIA GPUs (CUDA lane)",
    "engine: needs a vLLM engine (added to tests that use vllm_engine_host)",
    "backend: imports the backend's vLLM modules (added to tests that use vllm_backend)",
    f"{selection.BREAKS_SERVER_MARKER}: may leave the session server unusable; runs after every other test",
    f"{selection.BACKGROUND_MARKER}(fixture, beside='engine'): waits on background work the session fixture `fixture` "
    "starts at the first engine test (beside='server': at the session server's first user); runs after the engine tests",
    f"{selection.FIRST_MARKER}: starts no engine and waits on interpreters of its own; runs first",
    f"{selection.EARLY_SERVER_MARKER}(name, extra=()): uses a `trl vllm-serve` of its own with these extra arguments, "
    "started at collection end on the cpu lane",
)
XDIST_WORKER_ENV = host.XDIST_WORKER_ENV


def pytest_addoption(parser: pytest.Parser) -> None:
    settings.add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    if config.option.help:
        return
    config.stash[state.STATE_KEY] = state.RunState(build_context(config))
    config.pluginmanager.register(StartupRelay(state.of(config)), "vllmcompat-startups")
    _stop_cleanly_on_sigterm()
    _pin_gpu_for_xdist_worker(state.of(config).context.lane)
    # Before any engine import, and before the children's environment is recorded: every engine shares them.
    cache_dir = Path(settings.resolve(config, "vllm_cache_dir"))
    os.environ.update(compile_cache_env(cache_dir, os.environ))
    os.environ.update(vec_isa_env(cache_dir, os.environ))  # inductor's ISA check once, not in every engine
    childenv.record_session_start()  # after the GPU pinning and the compile caches, which children must inherit


def _pin_gpu_for_xdist_worker(lane: str) -> None:
    """CUDA lane under xdist: worker gwK sees its block of the GPUs (host.pin_gpu_for_worker), set before anything
    initializes CUDA. A CUDA_VISIBLE_DEVICES set by the user wins."""
    worker = os.environ.get(XDIST_WORKER_ENV)
    if lane != "cuda" or not worker or host.CUDA_VISIBLE_ENV in os.environ:
        return
    workers = os.environ.get(host.XDIST_WORKERS_ENV, "")
    pinned = host.pin_gpu_for_worker(worker, host.gpu_count(), int(workers) if workers.isdigit() else None)
    if pinned is not None:
        os.environ[host.CUDA_VISIBLE_ENV] = pinned


def _stop_cleanly_on_sigterm() -> None:
    """SIGTERM to pytest becomes KeyboardInterrupt, so session teardown stops servers and engines."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"pytest received signal {signum}")

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        pass


@pytest.hookimpl(tryfirst=True)  # before the session runs (the main pytest_cmdline_main runs it)
def pytest_cmdline_main(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # xdist workers send their reports to the controller
        config.pluginmanager.register(ResultsWriter(config), "vllmcompat-results")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop servers left behind by earlier runs that crashed (their owner pid is gone), and say so."""
    if state.has_state(session.config) and not os.environ.get(XDIST_WORKER_ENV):
        state.of(session.config).swept = sweep_leftovers()


def pytest_report_header(config: pytest.Config) -> list[str]:
    if not state.has_state(config):
        return []
    run = state.of(config)
    caches = ", ".join(f"{var}={os.environ.get(var, '')}" for var in COMPILE_CACHE_VARS)
    isa = os.environ.get(VEC_ISA_ENV)
    isa_line = (f"{VEC_ISA_ENV}={isa} (the check's answer, measured once: process/vec_isa.py)" if isa
                else f"{VEC_ISA_ENV} unset (each engine checks its CPU's ISAs)")
    return [*run.context.header(), f"vllmcompat compile caches: {caches}", f"vllmcompat inductor: {isa_line}",
            *(f"vllmcompat swept a leftover of a crashed run: {line}" for line in run.swept)]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that takes `vllm_mode` (directly or through `vllm_generator`) runs once per selected mode."""
    if selection.MODE_PARAM in metafunc.fixturenames:
        metafunc.parametrize(selection.MODE_PARAM, settings.MODES, ids=settings.MODES, scope="session")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run = state.of(config)
    keep, drop = selection.select(run.context, items)
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = selection.run_order(keep, run.context.lane)
    fatal = run.context.unexecutable()
    if fatal:  # a skip, not a crash: the cell's result then says why this host checked nothing (the gate: UNVERIFIED)
        for item in items:
            item.add_marker(pytest.mark.skip(reason=fatal))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Note the background work the selected tests wait on (started at the first test of its group: fixtures.py).
    When a selected test will use the server, start it now, in the background (servers.py: early start), and on
    the cpu lane the servers of their own that selected tests declare (marker vllm_early_server).
    Not under xdist (which worker runs the server tests is not known here), not with --collect-only, not when
    the host cannot run an engine (the fixture skips with the reason), not with VLLMCOMPAT_PRESTART=0."""
    config = session.config
    if state.has_state(config) and not os.environ.get(XDIST_WORKER_ENV):
        # Here, not in modifyitems: -k and -m deselect after this plugin's hook. Not in an xdist worker, which may
        # not run the tests that wait (they start the work themselves).
        state.of(config).background = selection.background_to_start(session.items)
    if (not state.has_state(config) or config.option.collectonly or not session.items
            or os.environ.get(XDIST_WORKER_ENV) or os.environ.get(PRESTART_ENV, "1") == "0"
            or getattr(config.option, "numprocesses", None)):
        return
    run = state.of(config)
    ctx = run.context
    if ("server" in ctx.modes and any(selection.needs_server(item, ctx.lane) for item in session.items)
            and not ctx.engine_blocker()):
        factory = ServerFactory(run, config._tmp_path_factory)  # type: ignore[attr-defined]
        factory.prestart()
        if ctx.lane == "cpu":  # servers.py says why not on CUDA
            for name, extra in selection.early_servers(session.items, ctx.lane):
                factory.prestart(name, extra)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked gpu(n) skip, before their fixtures start anything, unless this is the CUDA lane with n GPUs."""
    if state.has_state(item.config):
        reason = selection.gpu_skip_reason(item, state.of(item.config).context.lane)
        if reason:
            skips.not_on_this_lane(item, reason)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, Any, Any]:
    """Servers remember the test they were started in; after each test, stopped servers are forgotten."""
    if not state.has_state(item.config):
        return (yield)
    run = state.of(item.config)
    run.current_test = item.nodeid
    try:
        return (yield)
    finally:
        run.current_test = None
        run.prune()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """Known failures are judged (known_failures.py); a failing test that uses servers gets their log tails."""
    report = yield
    known_failures.judge(item, call, report)
    skips.classify(item, report)
    if report.failed and state.has_state(item.config) and "vllm_server_factory" in getattr(item, "fixturenames", ()):
        for server in state.of(item.config).servers_for_report(item.nodeid):
            report.sections.append((f"{server.name} log tail ({server.log_path})", server.log_tail()))
    return report


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist controller: a worker that crashed (e.g. kill -9) could not stop its servers (their watchdogs do);
    sweep whatever is still owned by the dead worker's pid at once instead of leaving it to the next run."""
    if not error or not state.has_state(node.config):
        return
    # The controller can hear of the crash while the worker is still exiting (not yet a zombie), when its
    # servers still look owned: sweep again for a few seconds until something is found.
    deadline, swept = time.monotonic() + 3.0, list[str]()
    while not swept and time.monotonic() < deadline:
        swept = sweep_leftovers()
        if not swept:
            time.sleep(0.1)
    state.of(node.config).swept.extend(swept)
    reporter = node.config.pluginmanager.get_plugin("terminalreporter")
    for line in swept:
        if reporter is not None:
            reporter.write_line(f"vllmcompat swept a server of crashed worker {node.gateway.id}: {line}")


def pytest_unconfigure(config: pytest.Config) -> None:
    if state.has_state(config):
        stop_prestarted(state.of(config))  # started early but never claimed (e.g. -x stopped the run first)
