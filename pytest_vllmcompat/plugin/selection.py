"""Which collected tests run in this session: mode selection, known failures, GPU requirements.

A test's modes come from its `vllm_mode` parameter, else its `vllm_mode` marker, else the mode fixtures it uses;
tests with no mode (identity, patches, imports) run in every selection.
"""

from __future__ import annotations

import pytest

from .. import host
from .context import Context
from .known_failures import KNOWN_KEY

MODE_PARAM = "vllm_mode"
# Fixtures that bind a test to a mode even without a `vllm_mode` parameter or marker.
MODE_FIXTURES = {"colocate_generator": "colocate", "vllm_server": "server", "server_client": "server"}
# Markers the plugin adds from the fixtures a test uses, so known failures can select "every test that needs an
# engine" by what the test does, not by how it is spelled. Tests may also carry them explicitly.
# vllm_generator picks its engine at run time (getfixturevalue), so it is named here too.
FIXTURE_MARKERS = {"engine": {"vllm_engine_host", "vllm_generator"}, "backend": {"vllm_backend", "vllm_generator"}}


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


def markers(item: pytest.Item) -> frozenset[str]:
    """The test's marker names, after the plugin added those its fixtures imply (FIXTURE_MARKERS)."""
    used = set(getattr(item, "fixturenames", ()))
    for marker, fixtures in FIXTURE_MARKERS.items():
        if used & fixtures and item.get_closest_marker(marker) is None:
            item.add_marker(marker)
    return frozenset(m.name for m in item.iter_markers())


def select(ctx: Context, items: list[pytest.Item]) -> tuple[list[pytest.Item], list[pytest.Item]]:
    """(kept, deselected) for the selected modes; kept tests remember their declared known failures
    (judged in known_failures.judge when their reports are made)."""
    keep, drop = [], []
    for item in items:
        if not item_modes(item) <= set(ctx.modes):
            drop.append(item)
            continue
        keep.append(item)
        if ctx.matrix is not None and ctx.cell is not None:
            known = ctx.matrix.known_failures_for(ctx.cell, item.nodeid, markers(item))
            if known:
                item.stash[KNOWN_KEY] = known
    return keep, drop


BREAKS_SERVER_MARKER = "breaks_session_server"
# vllm_background("fixture", beside="engine"|"server"): the test waits on work that session fixture started at the
# first engine test (default) or at the first user of the session server (BESIDE)
BACKGROUND_MARKER = "vllm_background"
# vllm_early_server(name, extra=(...)): the test uses a `trl vllm-serve` of its own with these extra arguments,
# which the plugin may start at collection end (servers.py, early start)
EARLY_SERVER_MARKER = "vllm_early_server"

# vllm_first: the test starts no engine and mostly waits on fresh interpreters of its own: it runs first
FIRST_MARKER = "vllm_first"

# The groups of run_order, in the order they run.
FIRST, NO_ENGINE, SERVER_USERS, ENGINE_TESTS, AFTER_BACKGROUND, SERVER_BREAKERS = range(6)
# vllm_background's `beside`: the group at whose first test (or the first later one, when that group has no test
# selected) the work starts
BESIDE = {"engine": ENGINE_TESTS, "server": SERVER_USERS}


def group(item: pytest.Item, lane: str) -> int:
    """The run_order group of a kept test."""
    if item.get_closest_marker(BREAKS_SERVER_MARKER) is not None:
        return SERVER_BREAKERS
    if background_fixture(item) is not None:
        return AFTER_BACKGROUND
    if needs_server(item, lane):
        return SERVER_USERS
    if "engine" in markers(item):
        return ENGINE_TESTS
    return FIRST if item.get_closest_marker(FIRST_MARKER) is not None else NO_ENGINE


def run_order(items: list[pytest.Item], lane: str) -> list[pytest.Item]:
    """The order the kept tests run in (stable within each group):
      0. first, tests marked `vllm_first` (no engine; they wait on interpreters of their own, such as the patch
         probes): their interpreters start at once, beside the early servers' start-ups, while the rest of
         group 0 is single-threaded work in this process (measured on 2 cores: under one core busy in the
         cell's first 30 s before this);
         then the other tests that start no engine (imports, identity): the session server's start-up, begun at
         collection end (servers.py), runs beside them, and on the cpu lane the servers tests declare with
         `vllm_early_server` (the float32 server);
      1. the session server's users (the first one waits for what is left of its start-up);
      2. every other engine test (the colocate engine, trainer runs, servers of their own); the background work
         of group 3 (marker `vllm_background`) is started at the first of them and runs beside them, or with
         `beside="server"` at the first of group 1, once the session server is ready (work that mostly waits
         and uses that server: it then also runs beside the server's users);
      3. tests marked `vllm_background("fixture")`: they wait on that session fixture's background work;
      4. tests marked `breaks_session_server`: they may leave it unusable, so they are its last users.
    Why the colocate engine and the trainer runs do not overlap the servers' start-ups: on a small CPU runner
    engines starting at once slow each other (measured on 2 cores, an old cell: the colocate engine's start went
    from 19 s to 104 s beside the server's). Two servers side by side did pay on 2 cores (vllm-0.11.1(tf4), warm
    caches: the session server ready in 58-62 s instead of 43, the float32 server waited for no more, and the
    cell's pytest went from 210 s to 161-164 s). Background work is only what mostly waits (see
    pytest_vllmcompat/process/background.py).
    """
    return sorted(items, key=lambda item: group(item, lane))


def background_fixture(item: pytest.Item) -> str | None:
    """The session fixture whose background work the test waits on (its `vllm_background` marker), else None."""
    marker = item.get_closest_marker(BACKGROUND_MARKER)
    return None if marker is None else str(marker.args[0])


def background_start(item: pytest.Item) -> int:
    """The run_order group at whose first test the work of the test's `vllm_background` marker starts (for a test
    that has one)."""
    marker = item.get_closest_marker(BACKGROUND_MARKER)
    assert marker is not None, f"{item.nodeid} has no {BACKGROUND_MARKER} marker"
    beside = str(marker.kwargs.get("beside", "engine"))
    if beside not in BESIDE:
        raise pytest.UsageError(f"{item.nodeid}: {BACKGROUND_MARKER}(beside={beside!r}): not one of "
                                f"{', '.join(map(repr, BESIDE))}")
    return BESIDE[beside]


def background_to_start(items: list[pytest.Item]) -> list[tuple[str, int]]:
    """(fixture, the group whose first test starts it) for the fixtures the kept tests' `vllm_background` markers
    name, once each, in run order (the first marker naming a fixture sets its group; every marker is checked)."""
    found: dict[str, int] = {}
    for item in items:
        name = background_fixture(item)
        if name is not None:
            found.setdefault(name, background_start(item))
    return list(found.items())


def early_servers(items: list[pytest.Item], lane: str) -> list[tuple[str, tuple[str, ...]]]:
    """(name, extra arguments) of the servers the kept tests' `vllm_early_server` markers declare, once each, in
    run order (a GPU test skipped before its fixtures run declares none)."""
    found: dict[tuple[str, tuple[str, ...]], None] = {}
    for item in items:
        marker = item.get_closest_marker(EARLY_SERVER_MARKER)
        if marker is not None and gpu_skip_reason(item, lane) is None:
            found[(str(marker.args[0]), tuple(map(str, marker.kwargs.get("extra", ()))))] = None
    return list(found)


def needs_server(item: pytest.Item, lane: str) -> bool:
    """The test will use the session server (a GPU test skipped before its fixtures run will not)."""
    return gpu_skip_reason(item, lane) is None and "server" in item_modes(item)
