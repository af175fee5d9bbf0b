"""Which collected tests run in this session: mode selection, known failures, GPU requirements.

A test's modes come from its `vllm_mode` parameter, else its `vllm_mode` marker, else the mode fixtures it uses;
tests with no mode (identity, patches, imports) run in every selection.
"""

from __future__ import annotations

import pytest

from .. import host
from .context import Context

MODE_PARAM = "vllm_mode"
# Fixtures that bind a test to a mode even without a `vllm_mode` parameter or marker.
MODE_FIXTURES = {"colocate_generator": "colocate", "vllm_server": "server", "server_client": "server"}


def item_modes(item: pytest.Item) -> set[str]:
    """The backend modes a test exercises: its `vllm_mode` parameter, else its marker, else the mode
    fixtures it uses. Empty for mode-independent tests."""
    callspec = getattr(item, "callspec", None)
    if callspec is not None and MODE_PARAM in callspec.params:
        return {callspec.params[MODE_PARAM]}
    marker = item.get_closest_marker("vllm_mode")
    if marker:
        return {marker.args[0]}
    return {MODE_FIXTURES[name] for name in getattr(item, "fixturenames", ()) if name in MODE_FIXTURES}


def gpus_needed(item: pytest.Item) -> int | None:
    """n of the test's `gpu(n)` marker, None when it has none."""
    marker = item.get_closest_marker("gpu")
    if marker is None:
        return None
    return int(marker.kwargs.get("n", marker.args[0] if marker.args else 1))


def gpu_skip_reason(item: pytest.Item, lane: str) -> str | None:
    needed = gpus_needed(item)
    return None if needed is None else host.gpu_skip_reason(lane, needed)


def select(ctx: Context, items: list[pytest.Item]) -> tuple[list[pytest.Item], list[pytest.Item]]:
    """(kept, deselected) for the selected modes; kept tests with a declared known failure get its strict xfail."""
    keep, drop = [], []
    for item in items:
        if not item_modes(item) <= set(ctx.modes):
            drop.append(item)
            continue
        keep.append(item)
        if ctx.matrix is not None and ctx.cell is not None:
            for kf in ctx.matrix.known_failures_for(ctx.cell, item.nodeid):
                item.add_marker(pytest.mark.xfail(reason=kf.reason, strict=True))
    return keep, drop


def needs_server(item: pytest.Item, lane: str) -> bool:
    """The test will use the session server (a GPU test skipped before its fixtures run will not)."""
    return gpu_skip_reason(item, lane) is None and "server" in item_modes(item)
