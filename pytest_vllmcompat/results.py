"""Machine-readable result of one cell run: `--vllm-results DIR` writes one JSON file per run.

The plugin feeds every test report to a `Collector` (in the xdist controller,
which receives the workers' reports) and writes the file at session end.
Startup times are recorded by the fixtures with `record_startup`; in an xdist
worker they travel to the controller in the reports' `user_properties`.

Schema (version 1)::

    {"schema": 1, "cell": {session, vllm, vllm_description, transformers_line,
     transformers, torch, lane, target, target_label, backend, backend_version,
     matrix_cell, matrix_problem, modes, host: {name, os, glibcxx, gpus}},
     "started", "finished", "duration", "exit_status",
     "counts": {passed, failed, skipped, xfailed, xpassed, error},
     "startup": {"colocate_engine": [s, ...], "server": [s, ...]},
     "tests": [{nodeid, outcome, duration, reason?, longrepr?}]}
"""

from __future__ import annotations

import json
import re
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

SCHEMA = 1
OUTCOMES = ("passed", "failed", "skipped", "xfailed", "xpassed", "error")
STARTUP_PROPERTY = "vllmcompat_startup"
LONGREPR_LINES = 30
LONGREPR_CHARS = 3000

_STARTUPS: list[tuple[str, float]] = []  # recorded in this process, not yet handed over


def record_startup(kind: str, seconds: float | None) -> None:
    """A fixture started something expensive: kind is 'colocate_engine' or 'server'."""
    if seconds is not None:
        _STARTUPS.append((kind, round(float(seconds), 3)))


def drain_startups() -> list[tuple[str, float]]:
    taken = list(_STARTUPS)
    _STARTUPS.clear()
    return taken


def sanitize(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._]+", "-", text).strip("-") or "none"


def short_longrepr(text: str) -> str:
    """The head line (it names the failure) plus the tail (where it happened), bounded."""
    lines = text.rstrip().splitlines()
    if len(lines) > LONGREPR_LINES:
        lines = [lines[0], f"... ({len(lines) - LONGREPR_LINES} lines omitted) ...", *lines[-(LONGREPR_LINES - 1):]]
    short = "\n".join(lines)
    return short if len(short) <= LONGREPR_CHARS else short[: LONGREPR_CHARS // 3] + "\n...\n" + short[-(2 * LONGREPR_CHARS) // 3:]


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = str(longrepr[2])
        return reason[len("Skipped: "):] if reason.startswith("Skipped: ") else reason
    return str(longrepr or "")


class Collector:
    """Folds setup/call/teardown reports into one outcome per test."""

    def __init__(self) -> None:
        self.tests: dict[str, dict] = {}
        self.startup: dict[str, list[float]] = {}
        self.started = time.time()

    def add_startups(self, records) -> None:
        for kind, seconds in records:
            self.startup.setdefault(kind, []).append(seconds)

    def add(self, report) -> None:
        for name, value in getattr(report, "user_properties", ()):
            if name == STARTUP_PROPERTY:
                self.add_startups(value)
        entry = self.tests.setdefault(report.nodeid, {"nodeid": report.nodeid, "outcome": None, "duration": 0.0})
        entry["duration"] = round(entry["duration"] + (getattr(report, "duration", 0.0) or 0.0), 4)
        outcome = self._outcome(report)
        if outcome is None:
            return
        kind, detail = outcome
        if entry["outcome"] in (None, "passed", "xpassed") or kind == "error" and entry["outcome"] != "failed":
            entry["outcome"] = kind
            for stale in ("reason", "longrepr"):
                entry.pop(stale, None)
            entry.update(detail)

    @staticmethod
    def _outcome(report) -> tuple[str, dict] | None:
        wasxfail = getattr(report, "wasxfail", None)
        if report.when == "call" or report.when == "collect":
            if report.passed:
                return ("xpassed", {"reason": wasxfail}) if wasxfail is not None else ("passed", {})
            if report.skipped:
                if wasxfail is not None:
                    return "xfailed", {"reason": wasxfail}
                return "skipped", {"reason": _skip_reason(report)}
            kind = "error" if report.when == "collect" else "failed"
            return kind, {"longrepr": short_longrepr(report.longreprtext)}
        # setup / teardown
        if report.skipped and report.when == "setup":
            if wasxfail is not None:
                return "xfailed", {"reason": wasxfail}
            return "skipped", {"reason": _skip_reason(report)}
        if report.failed:
            return "error", {"longrepr": f"error in {report.when}: " + short_longrepr(report.longreprtext)}
        return None

    def result(self, ctx, exit_status: int) -> dict:
        tests = [t for t in self.tests.values() if t["outcome"] is not None]
        counts = {o: sum(t["outcome"] == o for t in tests) for o in OUTCOMES}
        finished = time.time()
        return {
            "schema": SCHEMA,
            "cell": cell_identity(ctx),
            "started": _iso(self.started),
            "finished": _iso(finished),
            "duration": round(finished - self.started, 3),
            "exit_status": int(exit_status),
            "counts": counts,
            "startup": self.startup,
            "tests": tests,
        }


class ResultsWriter:
    """Registered by the plugin in the main process; inert unless --vllm-results is set."""

    def __init__(self, config) -> None:
        self.config = config
        self.collector = Collector()
        self.path: Path | None = None

    def directory(self) -> Path | None:
        from . import config as settings
        from .plugin import CONTEXT_KEY

        if CONTEXT_KEY not in self.config.stash:  # --help, or configure failed
            return None
        value = settings.resolve(self.config, "vllm_results")
        return Path(value).expanduser() if value else None

    def pytest_runtest_logreport(self, report) -> None:
        self.collector.add(report)

    def pytest_collectreport(self, report) -> None:
        if report.failed or report.skipped:  # collection errors, and modules skipped as a whole
            self.collector.add(report)

    def pytest_sessionfinish(self, session, exitstatus) -> None:
        directory = self.directory()
        if directory is None:
            return
        from .plugin import get_context

        self.collector.add_startups(drain_startups())
        self.path = write(directory, self.collector.result(get_context(self.config), exitstatus))

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.path is not None:
            terminalreporter.write_line(f"vllmcompat results: {self.path}")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def cell_identity(ctx) -> dict:
    from . import cellinfo, lanes
    from .matrix import target_label

    versions = cellinfo.versions()
    backend = ctx.matrix.backend_name if ctx.matrix is not None else "trl"
    tf_line = cellinfo.transformers_line()
    path, level = lanes.host_glibcxx()
    return {
        "session": ctx.cell.session if ctx.cell else f"vllm-{versions['vllm'] or 'none'}(tf{tf_line or 'none'})",
        "vllm": versions["vllm"],
        "vllm_description": cellinfo.vllm_description(),
        "transformers_line": tf_line,
        "transformers": versions["transformers"],
        "torch": versions["torch"],
        "lane": ctx.lane,
        "target": ctx.target,
        "target_label": target_label(ctx.target),
        "backend": backend,
        "backend_version": cellinfo.installed(backend),
        "matrix_cell": ctx.cell is not None,
        "matrix_problem": ctx.matrix_problem,
        "modes": list(ctx.modes),
        "host": {
            "name": socket.gethostname(),
            "os": lanes.host_description(),
            "glibcxx": ".".join(map(str, level)) if level else None,
            "gpus": lanes.gpu_count(),
        },
    }


def file_name(cell: dict) -> str:
    return f"{sanitize(cell['session'])}-{cell['lane']}-{sanitize(cell['target_label'])}.json"


def write(directory: Path, result: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / file_name(result["cell"])
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)
    return path
