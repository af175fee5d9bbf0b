"""The pytest side of a cell's result: `--vllm-results DIR` writes one JSON file per run (report/schema.py).

`ResultsWriter` is registered in the main process only (the xdist controller, which receives the workers'
reports) and feeds every report to a `Collector`; the file is written at session end. Startup times recorded by
the fixtures travel to it in the reports' `user_properties` (from xdist workers too).
"""

from __future__ import annotations

import socket
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from .. import host
from ..install import engine_route, host_torch
from ..install import installed as cellinfo
from ..matrix import target_label
from ..report import schema
from . import known_failures, recorded, settings, skips, state
from .context import Context

STARTUP_PROPERTY = "vllmcompat_startup"
LONGREPR_LINES = 30
LONGREPR_CHARS = 3000


def short_longrepr(text: str) -> str:
    """The head line (it names the failure) plus the tail (where it happened), bounded."""
    lines = text.rstrip().splitlines()
    if len(lines) > LONGREPR_LINES:
        lines = [lines[0], f"... ({len(lines) - LONGREPR_LINES} lines omitted) ...", *lines[-(LONGREPR_LINES - 1):]]
    short = "\n".join(lines)
    return short if len(short) <= LONGREPR_CHARS else short[: LONGREPR_CHARS // 3] + "\n...\n" + short[-(2 * LONGREPR_CHARS) // 3:]


def _skip_reason(report: Any) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = str(longrepr[2])
        return reason.removeprefix("Skipped: ")
    return str(longrepr or "")


Outcome = tuple[str, dict[str, str]]
DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
WATCHED_PACKAGES = ("trl", "vllm", "transformers")  # the backend and what it calls


def _package_of(filename: str) -> str | None:
    """The watched package a file belongs to (by its path: .../site-packages/vllm/...), else None."""
    parts = Path(filename).parts
    for package in WATCHED_PACKAGES:
        if package in parts[:-1]:
            return package
    return None


class Collector:
    """Folds setup/call/teardown reports into one outcome per test."""

    def __init__(self) -> None:
        self.tests: dict[str, schema.TestRecord] = {}
        self.startup: dict[str, list[float]] = {}
        self.deprecations: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.started = time.time()

    def add_warning(self, message: warnings.WarningMessage, nodeid: str) -> None:
        """Keep deprecations raised in the code of the packages under test (where the warning points to)."""
        if not issubclass(message.category, DEPRECATIONS):
            return
        where = _package_of(message.filename)
        if where is None:
            return
        key = (message.category.__name__, str(message.message), where)
        entry = self.deprecations.setdefault(key, {"category": key[0], "message": key[1], "where":
                                                   f"{where} ({Path(message.filename).name}:{message.lineno})",
                                                   "tests": []})
        if nodeid and nodeid not in entry["tests"]:
            entry["tests"].append(nodeid)

    def add_startups(self, records: list[tuple[str, float]]) -> None:
        for kind, seconds in records:
            self.startup.setdefault(kind, []).append(seconds)

    def add(self, report: Any) -> None:
        entry = self.tests.setdefault(report.nodeid, schema.TestRecord(report.nodeid, None))
        for name, value in getattr(report, "user_properties", ()):
            if name == STARTUP_PROPERTY:
                self.add_startups(value)
            elif name == known_failures.PROPERTY:
                entry.known_failure = dict(value)
            elif name == skips.PROPERTY:
                entry.skip_kind = value
            elif name == recorded.SUBSTITUTED and value not in (entry.substituted or []):
                entry.substituted = [*(entry.substituted or []), value]
            elif name == recorded.MEASURED:
                entry.measured = {**(entry.measured or {}), value[0]: value[1]}
        entry.duration = round(entry.duration + (getattr(report, "duration", 0.0) or 0.0), 4)
        outcome = self._outcome(report)
        if outcome is None:
            return
        kind, detail = outcome
        if entry.outcome in (None, "passed", "xpassed") or kind == "error" and entry.outcome != "failed":
            entry.outcome, entry.reason, entry.longrepr = kind, detail.get("reason"), detail.get("longrepr")
        if entry.outcome != "skipped":
            entry.skip_kind = None

    @staticmethod
    def _outcome(report: Any) -> Outcome | None:
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

    def result(self, ctx: Context, exit_status: int, selection: schema.Selection) -> schema.RunResult:
        tests = [t for t in self.tests.values() if t.outcome is not None]
        counts = {o: sum(t.outcome == o for t in tests) for o in schema.OUTCOMES}
        finished = time.time()
        return schema.RunResult(cell=cell_record(ctx), started=_iso(self.started), finished=_iso(finished),
                                duration=round(finished - self.started, 3), exit_status=int(exit_status),
                                counts=counts, startup=self.startup, tests=tests, selection=selection,
                                deprecations=list(self.deprecations.values()))


class StartupRelay:
    """Startup times recorded by the fixtures in this process travel with the next report (to the controller)."""

    def __init__(self, run: state.RunState) -> None:
        self.run = run

    @pytest.hookimpl(tryfirst=True)  # before xdist's worker sends the report, and before ResultsWriter reads it
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        startups = self.run.drain_startups()
        if startups:
            report.user_properties.append((STARTUP_PROPERTY, startups))


class ResultsWriter:
    """Registered by the plugin in the main process; inert unless --vllm-results is set."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.collector = Collector()
        self.path: Path | None = None
        self.deselected = 0

    def directory(self) -> Path | None:
        if not state.has_state(self.config):  # --help, or configure failed
            return None
        value = settings.resolve(self.config, "vllm_results")
        return Path(value).expanduser() if value else None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.collector.add(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed or report.skipped:  # collection errors, and modules skipped as a whole
            self.collector.add(report)

    def pytest_warning_recorded(self, warning_message: warnings.WarningMessage, when: str, nodeid: str,
                                location: Any) -> None:
        self.collector.add_warning(warning_message, nodeid)

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.deselected += len(items)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        directory = self.directory()
        if directory is None or self.config.option.collectonly:  # a collection is no result
            return
        run = state.of(self.config)
        self.collector.add_startups(run.drain_startups())
        selection = selection_record(session, run.context, None if _under_xdist(self.config) else self.deselected,
                                     exitstatus)
        self.path = schema.write(directory, self.collector.result(run.context, exitstatus, selection))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        fatal = state.of(self.config).context.unexecutable() if state.has_state(self.config) else None
        if fatal:
            terminalreporter.write_line(f"vllmcompat: NOTHING WAS CHECKED: {fatal}", red=True, bold=True)
        unverified = [t.nodeid for t in self.collector.tests.values()
                      if t.known_failure and t.known_failure.get("state") == "unverified"]
        if unverified:
            terminalreporter.write_line(f"vllmcompat: {len(unverified)} known failure(s) unverified here (the test "
                                        f"skipped): {', '.join(unverified)}", yellow=True)
        for replaced in schema.substitutions(self.collector.tests.values()):
            terminalreporter.write_line(f"vllmcompat: {replaced['what']} ({len(replaced['tests'])} test(s) replaced "
                                        "it on this lane; the other lane runs it for real)", yellow=True)
        if self.path is not None:
            terminalreporter.write_line(f"vllmcompat results: {self.path}")


def _under_xdist(config: pytest.Config) -> bool:
    return bool(getattr(config.option, "numprocesses", None))


def selection_record(session: pytest.Session, ctx: Context, deselected: int | None,
                     exitstatus: int = 0) -> schema.Selection:
    """Which part of the suite this run selected; any narrowing makes the result partial (never gated)."""
    option, why = session.config.option, []
    if option.keyword:
        why.append(f"-k {option.keyword}")
    if option.markexpr:
        why.append(f"-m {option.markexpr}")
    if tuple(ctx.modes) != settings.MODES:
        why.append(f"--vllm-mode={','.join(ctx.modes)}")
    if getattr(option, "lf", False):
        why.append("--lf")
    if getattr(option, "deselect", None):
        why.append("--deselect")
    explicit = [a for a in session.config.args if "::" in a or Path(a.split("::")[0]).is_file()]
    if explicit:
        why.append(f"explicit tests: {' '.join(explicit)}")
    if session.shouldstop or session.shouldfail:
        why.append(f"stopped early ({session.shouldstop or session.shouldfail})")
    if exitstatus == pytest.ExitCode.INTERRUPTED:  # Ctrl-C or SIGTERM: the tests after it never ran
        why.append("interrupted")
    return schema.Selection(modes=list(ctx.modes), deselected=deselected, partial=bool(why), why_partial=why)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def cell_record(ctx: Context) -> schema.CellRecord:
    versions = cellinfo.versions()
    backend = ctx.matrix.backend_name if ctx.matrix is not None else "trl"
    tf_line = cellinfo.transformers_line()
    _, level = host.host_glibcxx()
    return schema.CellRecord(
        session=ctx.cell.session if ctx.cell else f"vllm-{versions['vllm'] or 'none'}(tf{tf_line or 'none'})",
        vllm=versions["vllm"], vllm_description=cellinfo.vllm_description(), transformers_line=tf_line,
        transformers=versions["transformers"], torch=versions["torch"], lane=ctx.lane, target=ctx.target,
        target_label=target_label(ctx.target), backend=backend, backend_version=cellinfo.installed(backend),
        matrix_cell=ctx.cell is not None, matrix_problem=ctx.matrix_problem, modes=list(ctx.modes),
        host=schema.HostRecord(name=socket.gethostname(), os=host.host_description(),
                               glibcxx=".".join(map(str, level)) if level else None, gpus=host.gpu_count(),
                               engine=engine_route.description(with_loader=False),
                               torch_source=host_torch.torch_source()),
    )
