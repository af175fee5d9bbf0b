"""The run's state, one object in `config.stash` (no module globals): the cell context, servers started, the
server started early, startup times waiting to travel with the next report, leftovers swept."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from ..process.executor import ServerProcess
from .context import Context


@dataclass
class RunState:
    context: Context
    swept: list[str] = field(default_factory=list)  # leftovers of crashed runs stopped at session start
    servers: list[ServerProcess] = field(default_factory=list)  # for log tails in failure reports
    # servers started at collection end, not yet claimed: the session's, and those `vllm_early_server` declares
    prestarted: list[ServerProcess] = field(default_factory=list)
    startups: list[tuple[str, float]] = field(default_factory=list)  # recorded here, not yet reported
    current_test: str | None = None  # node id of the test running now (servers remember where they started)
    started_in: dict[int, str | None] = field(default_factory=dict)  # id(server) -> test it was started in
    # (fixture, run_order group whose first test starts it) of background work not yet started
    background: list[tuple[str, int]] = field(default_factory=list)

    def register(self, server: ServerProcess) -> None:
        self.servers.append(server)
        self.started_in[id(server)] = self.current_test

    def forget(self, server: ServerProcess) -> None:
        if server in self.servers:
            self.servers.remove(server)
        self.started_in.pop(id(server), None)

    def servers_for_report(self, nodeid: str) -> list[ServerProcess]:
        """The servers whose log tail a failing test `nodeid` gets: the live ones and those started during it."""
        return [s for s in self.servers if s.alive or self.started_in.get(id(s)) == nodeid]

    def prune(self) -> None:
        """After a test: stopped servers no longer belong in later tests' reports."""
        for server in [s for s in self.servers if not s.alive]:
            self.forget(server)

    def record_startup(self, kind: str, seconds: float | None) -> None:
        """Something expensive started: kind is 'colocate_engine' or 'server'."""
        if seconds is not None:
            self.startups.append((kind, round(float(seconds), 3)))

    def drain_startups(self) -> list[tuple[str, float]]:
        taken, self.startups = self.startups, []
        return taken


STATE_KEY = pytest.StashKey[RunState]()


def has_state(config: pytest.Config) -> bool:
    return STATE_KEY in config.stash


def of(config: pytest.Config) -> RunState:
    return config.stash[STATE_KEY]


def record_startup(config: pytest.Config, kind: str, seconds: float | None) -> None:
    of(config).record_startup(kind, seconds)
