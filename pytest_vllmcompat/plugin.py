"""pytest11 entry point: options, markers, report header, mode selection, known failures.

Thin on purpose: the pieces live in config / context / fixtures / server.
Nothing heavy (torch, vLLM, transformers, the backend) is imported here.
"""

from __future__ import annotations

import os
import signal

import pytest

from . import config as settings
from . import context
from .fixtures import *  # noqa: F401,F403  (fixtures are registered by being in this module)

CONTEXT_KEY = pytest.StashKey[context.Context]()
SWEPT_KEY = pytest.StashKey[list]()
MODE_PARAM = "vllm_mode"


def pytest_addoption(parser: pytest.Parser) -> None:
    settings.add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vllm_mode(name): the test exercises this backend mode (colocate or server)")
    config.addinivalue_line("markers", "smoke: one generation test per mode; what the benchmark times")
    if config.option.help:
        return
    config.stash[CONTEXT_KEY] = context.build(config)
    _stop_cleanly_on_sigterm()


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


def item_mode(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    if callspec is not None and MODE_PARAM in callspec.params:
        return callspec.params[MODE_PARAM]
    marker = item.get_closest_marker("vllm_mode")
    return marker.args[0] if marker else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ctx = get_context(config)
    keep, drop = [], []
    for item in items:
        mode = item_mode(item)
        if mode is not None and mode not in ctx.modes:
            drop.append(item)
            continue
        keep.append(item)
        if ctx.matrix is not None and ctx.cell is not None:
            for kf in ctx.matrix.known_failures_for(ctx.cell, item.nodeid):
                item.add_marker(pytest.mark.xfail(reason=kf.reason, strict=True))
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A failing test that used a server gets the server's log tail in its report."""
    report = yield
    if report.failed and "vllm_server" in getattr(item, "fixturenames", ()):
        from .fixtures import STARTED_SERVERS

        for server in STARTED_SERVERS:
            report.sections.append((f"{server.name} log tail ({server.log_path})", server.log_tail()))
    return report
