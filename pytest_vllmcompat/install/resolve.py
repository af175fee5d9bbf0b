"""The CUDA lane's install plans, checked without a GPU: `uv pip compile` for x86_64 manylinux (metadata only)."""

from __future__ import annotations

import fnmatch
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import MatrixError, PlanResolutionError
from ..matrix import Cell
from .plan import REPO_ROOT, InstallPlan

DEFAULT_PLATFORM = "x86_64-manylinux_2_28"  # what GPU runners are; uv resolves for it from anywhere
REPORTED_PINS = ("vllm", "torch", "transformers", "trl", "xformers", "triton", "flashinfer-python")


@dataclass(frozen=True)
class ResolvedPlan:
    cell: Cell
    python_version: str
    platform: str
    pins: dict[str, str]  # every resolved distribution (normalized name) -> version
    seconds: float

    def pin(self, name: str) -> str | None:
        return self.pins.get(_normalize_name(name))

    def summary(self) -> str:
        shown = " ".join(f"{n}=={self.pins[n]}" for n in REPORTED_PINS if n in self.pins)
        return f"{self.cell.session} [{self.cell.lane}]: {shown} ({self.seconds:.1f} s)"


def _normalize_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def uv_command() -> list[str]:
    """uv on PATH, else the `uv` package of this interpreter (`python -m uv`)."""
    found = shutil.which("uv")
    if found:
        return [found]
    if importlib.util.find_spec("uv") is not None:
        return [sys.executable, "-m", "uv"]
    raise FileNotFoundError("uv not found: install it (`pip install uv`, part of this project's [dev] extra)")


def _compile(plan: InstallPlan, python_version: str, platform: str, timeout: float, annotate: bool,
             prefer: Mapping[str, str] | None = None, extra: Sequence[str] = ()) -> tuple[str, float]:
    """`uv pip compile` of `plan` (+ `extra` requirement lines); `prefer`: versions uv keeps where they fit (written
    as the existing output file, which uv reads as preferences). Returns (uv's output, seconds)."""
    requirements = [r for r in plan.requirements if not _is_plugin_line(r)] + list(extra)
    with tempfile.TemporaryDirectory(prefix="vllmcompat-plan-") as tmp:
        req, ovr, out_file = Path(tmp, "requirements.in"), Path(tmp, "overrides.txt"), Path(tmp, "lock.txt")
        req.write_text("\n".join(requirements) + "\n")
        cmd = [*uv_command(), "pip", "compile", "--quiet", "--no-header", "--python-version", python_version,
               "--python-platform", platform, str(req)]
        cmd += [] if annotate else ["--no-annotate"]
        if plan.overrides:
            ovr.write_text("\n".join(plan.overrides) + "\n")
            cmd += ["--override", str(ovr)]
        if prefer:
            out_file.write_text("".join(f"{n}=={v}\n" for n, v in sorted(prefer.items())))
            cmd += ["--output-file", str(out_file)]
        started = time.monotonic()
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise PlanResolutionError(plan.cell, f"uv pip compile did not finish within {timeout:.0f} s", cmd) from None
        seconds = time.monotonic() - started
        if out.returncode != 0:
            message = (out.stderr.strip() or out.stdout.strip() or f"uv exited with {out.returncode}")
            raise PlanResolutionError(plan.cell, message, cmd)
        return (out_file.read_text() if prefer else out.stdout), seconds


def _pins(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line and not line.startswith("-"):
            name, version = line.split("==", 1)
            pins[_normalize_name(name.split("[", 1)[0].strip())] = version.split(";", 1)[0].strip()
    return pins


def resolve_plan(plan: InstallPlan, python_version: str, platform: str = DEFAULT_PLATFORM,
                 timeout: float = 300.0) -> ResolvedPlan:
    """Resolve `plan` with `uv pip compile` for `python_version` / `platform` (metadata only, no wheel
    downloads) and return the pins; raise PlanResolutionError naming the cell and quoting the resolver."""
    text, seconds = _compile(plan, python_version, platform, timeout, annotate=False)
    return ResolvedPlan(plan.cell, python_version, platform, _pins(text), seconds)


@dataclass(frozen=True)
class Lock:
    """A cell's resolution with what required what: the pins a cell installs with --no-deps."""

    resolved: ResolvedPlan
    parents: dict[str, frozenset[str]]  # name -> the names that require it ("" : a requirement of the plan)
    excluded: dict[str, str]  # name -> why it was left out (an --exclude pattern, or "only for NAME, ...")

    @property
    def pins(self) -> dict[str, str]:
        return {n: v for n, v in self.resolved.pins.items() if n not in self.excluded}


def resolve_lock(plan: InstallPlan, python_version: str, platform: str = DEFAULT_PLATFORM,
                 prefer: Mapping[str, str] | None = None, exclude: Sequence[str] = (), extra: Sequence[str] = (),
                 timeout: float = 300.0) -> Lock:
    """Resolve `plan` preferring the versions in `prefer` where they fit (a host's packages), then leave out the
    distributions named by `exclude` (fnmatch patterns on normalized names, e.g. `flashinfer-*`) and those that
    only they require."""
    text, seconds = _compile(plan, python_version, platform, timeout, annotate=True, prefer=prefer, extra=extra)
    resolved = ResolvedPlan(plan.cell, python_version, platform, _pins(text), seconds)
    parents = _parents(text)
    patterns = [_normalize_name(p) for p in exclude]
    excluded = {n: f"--exclude {p}" for n in resolved.pins for p in patterns if fnmatch.fnmatchcase(n, p)}
    changed = True
    while changed:  # orphans: every package requiring it is left out
        changed = False
        for name in resolved.pins:
            needers = parents.get(name, frozenset())
            if name not in excluded and needers and "" not in needers and needers <= set(excluded):
                excluded[name] = "only for " + ", ".join(sorted(needers))
                changed = True
    return Lock(resolved, parents, excluded)


def _parents(text: str) -> dict[str, frozenset[str]]:
    """uv's `# via` annotations: name -> the names that require it ("" for the plan's own files)."""
    found: dict[str, set[str]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if raw and not raw[0].isspace() and "==" in raw:
            current = _normalize_name(raw.split("==", 1)[0].split("[", 1)[0].strip())
            found.setdefault(current, set())
        elif current and line.startswith("#"):
            entry = line.lstrip("#").strip()
            entry = entry[len("via"):].strip() if entry.startswith("via") else entry
            if entry:
                found[current].add("" if entry.startswith("-") else _normalize_name(entry.split()[0]))
    return {n: frozenset(p) for n, p in found.items()}


def _is_plugin_line(requirement: str) -> bool:
    """The editable line of this project (`-e <checkout>`): not part of the cell's resolution."""
    if not requirement.startswith("-e "):
        return False
    try:
        return Path(requirement[3:].strip()).resolve() == REPO_ROOT
    except OSError:
        return False


def check_resolvable(requirement: str, python_version: str, timeout: float = 120.0) -> None:
    """Refuse a backend requirement that no release satisfies (e.g. trl==9.9), before a cell environment is
    recreated for it: `uv pip compile --no-deps` of that one requirement (about a second)."""
    with tempfile.TemporaryDirectory(prefix="vllmcompat-target-") as tmp:
        req = Path(tmp, "target.in")
        req.write_text(requirement + "\n")
        cmd = [*uv_command(), "pip", "compile", "--quiet", "--no-header", "--no-deps", "--python-version",
               python_version, str(req)]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return  # no answer (offline?): let the install say what it finds
    if out.returncode != 0:
        raise MatrixError(f"VLLMCOMPAT_TARGET={requirement} does not resolve: "
                          f"{(out.stderr.strip() or out.stdout.strip()).splitlines()[-1]}")
