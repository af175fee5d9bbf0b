"""pytest11 entry point: options, markers, report header, mode selection, known failures.

Thin on purpose: the pieces live in config / context / fixtures / server.
Nothing heavy (torch, vLLM, transformers, the backend) is imported here.
"""

from __future__ import annotations

import os
import signal

import pytest

from . import childenv
from . import config as settings
from . import context
from . import lanes
from .fixtures import *  # noqa: F401,F403  (fixtures are registered by being in this module)
from .fixtures import PRESTART_ENV, prestart_server, stop_prestarted

CONTEXT_KEY = pytest.StashKey[context.Context]()
SWEPT_KEY = pytest.StashKey[list]()
MODE_PARAM = "vllm_mode"


def pytest_addoption(parser: pytest.Parser) -> None:
    settings.add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vllm_mode(name): the test exercises this backend mode (colocate or server)")
    config.addinivalue_line("markers", "smoke: one generation test per mode; what the benchmark times")
    config.addinivalue_line("markers", "gpu(n=1): needs n NVIDIA GPUs (CUDA lane)")
    if config.option.help:
        return
    config.stash[CONTEXT_KEY] = context.build(config)
    _stop_cleanly_on_sigterm()
    _pin_gpu_for_xdist_worker(config.stash[CONTEXT_KEY].lane)
    childenv.record_session_start()  # after the GPU pinning, which children must inherit


def _pin_gpu_for_xdist_worker(lane: str) -> None:
    """CUDA lane under xdist: worker gwN sees one GPU (N mod count), set before anything initializes CUDA.
    A CUDA_VISIBLE_DEVICES set by the user wins."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if lane != "cuda" or not worker or lanes.CUDA_VISIBLE_ENV in os.environ:
        return
    pinned = lanes.pin_gpu_for_worker(worker, lanes.gpu_count())
    if pinned is not None:
        os.environ[lanes.CUDA_VISIBLE_ENV] = pinned


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked gpu(n) skip, before their fixtures start anything, unless this is the CUDA lane with n GPUs."""
    marker = item.get_closest_marker("gpu")
    if marker is None or CONTEXT_KEY not in item.config.stash:
        return
    needed = int(marker.kwargs.get("n", marker.args[0] if marker.args else 1))
    reason = lanes.gpu_skip_reason(get_context(item.config).lane, needed)
    if reason:
        pytest.skip(reason)


def _stop_cleanly_on_sigterm() -> None:
    """SIGTERM to pytest becomes KeyboardInterrupt, so session teardown stops servers and engines."""

    def handler(signum, frame):
        raise KeyboardInterrupt(f"pytest received signal {signum}")

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        pass


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop servers left behind by earlier runs that crashed (their owner pid is gone), and say so."""
    if CONTEXT_KEY not in session.config.stash or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    from .server import sweep_leftovers

    session.config.stash[SWEPT_KEY] = sweep_leftovers()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """xdist controller: a worker that crashed (e.g. kill -9) could not stop its servers; they are owned by the
    worker's pid, which is now gone, so sweep them at once instead of leaving them to the next run."""
    if not error or CONTEXT_KEY not in node.config.stash:
        return
    import time

    from .server import sweep_leftovers

    # The controller can hear of the crash while the worker is still exiting (not yet a zombie), when its
    # servers still look owned: sweep again for a few seconds until something is found.
    deadline, swept = time.monotonic() + 3.0, []
    while not swept and time.monotonic() < deadline:
        swept = sweep_leftovers()
        if not swept:
            time.sleep(0.1)
    node.config.stash.setdefault(SWEPT_KEY, []).extend(swept)
    reporter = node.config.pluginmanager.get_plugin("terminalreporter")
    for line in swept:
        if reporter is not None:
            reporter.write_line(f"vllmcompat swept a server of crashed worker {node.gateway.id}: {line}")


def get_context(config: pytest.Config) -> context.Context:
    return config.stash[CONTEXT_KEY]


def pytest_report_header(config: pytest.Config) -> list[str]:
    if CONTEXT_KEY not in config.stash:
        return []
    swept = [f"vllmcompat swept a leftover of a crashed run: {line}" for line in config.stash.get(SWEPT_KEY, [])]
    return get_context(config).header() + swept


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that takes `vllm_mode` (directly or through `vllm_generator`) runs once per selected mode."""
    if MODE_PARAM in metafunc.fixturenames:
        metafunc.parametrize(MODE_PARAM, settings.MODES, ids=settings.MODES, scope="session")


# Fixtures that bind a test to a mode even without a `vllm_mode` parameter or marker.
MODE_FIXTURES = {"colocate_generator": "colocate", "vllm_server": "server", "server_client": "server"}


def item_modes(item: pytest.Item) -> set[str]:
    """The backend modes a test exercises: its `vllm_mode` parameter, else its marker, else the mode
    fixtures it uses. Empty for mode-independent tests (identity, patches, imports)."""
    callspec = getattr(item, "callspec", None)
    if callspec is not None and MODE_PARAM in callspec.params:
        return {callspec.params[MODE_PARAM]}
    marker = item.get_closest_marker("vllm_mode")
    if marker:
        return {marker.args[0]}
    return {MODE_FIXTURES[name] for name in getattr(item, "fixturenames", ()) if name in MODE_FIXTURES}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ctx = get_context(config)
    keep, drop = [], []
    for item in items:
        if not item_modes(item) <= set(ctx.modes):
            drop.append(item)
            continue
        keep.append(item)
        if ctx.matrix is not None and ctx.cell is not None:
            for kf in ctx.matrix.known_failures_for(ctx.cell, item.nodeid):
                item.add_marker(pytest.mark.xfail(reason=kf.reason, strict=True))
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _needs_server(item: pytest.Item, lane: str) -> bool:
    marker = item.get_closest_marker("gpu")
    if marker is not None:
        needed = int(marker.kwargs.get("n", marker.args[0] if marker.args else 1))
        if lanes.gpu_skip_reason(lane, needed):
            return False  # skipped before its fixtures run
    return "server" in item_modes(item)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Issue #7: when a selected test will use the server, start it now, in the background, so its startup
    overlaps the colocate engine build and the tests before it (`vllm_server` then only waits for /health/).
    Not under xdist (which worker runs the server tests is not known here), not with --collect-only, not when
    the host cannot run an engine (the fixture skips with the reason), not with VLLMCOMPAT_PRESTART=0."""
    config = session.config
    if (CONTEXT_KEY not in config.stash or config.option.collectonly or not session.items
            or os.environ.get("PYTEST_XDIST_WORKER") or os.environ.get(PRESTART_ENV, "1") == "0"
            or getattr(config.option, "numprocesses", None)):
        return
    ctx = get_context(config)
    if "server" not in ctx.modes or not any(_needs_server(item, ctx.lane) for item in session.items):
        return
    if ctx.engine_blocker():
        return
    prestart_server(config, ctx)


def pytest_unconfigure(config: pytest.Config) -> None:
    stop_prestarted()  # started early but never claimed (e.g. -x stopped the run first)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A failing test that used a server gets the server's log tail in its report."""
    report = yield
    from .fixtures import SERVER_FIXTURES, STARTED_SERVERS

    if report.failed and SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        for server in STARTED_SERVERS:
            report.sections.append((f"{server.name} log tail ({server.log_path})", server.log_tail()))
    return report


# --- results (--vllm-results DIR): one JSON file per run, written by the main process only ---


@pytest.hookimpl(tryfirst=True)  # before the session runs (the main pytest_cmdline_main runs it)
def pytest_cmdline_main(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # xdist workers send their reports to the controller
        from .results import ResultsWriter

        config.pluginmanager.register(ResultsWriter(config), "vllmcompat-results")


@pytest.hookimpl(tryfirst=True)  # before xdist's worker sends the report, and before ResultsWriter reads it
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Startup times recorded by the fixtures in this process travel with the next report."""
    from . import results

    startups = results.drain_startups()
    if startups:
        report.user_properties.append((results.STARTUP_PROPERTY, startups))
