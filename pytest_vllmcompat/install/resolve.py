"""The CUDA lane's install plans, checked without a GPU: `uv pip compile` for x86_64 manylinux (metadata only)."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
import time
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


def resolve_plan(plan: InstallPlan, python_version: str, platform: str = DEFAULT_PLATFORM,
                 timeout: float = 300.0) -> ResolvedPlan:
    """Resolve `plan` with `uv pip compile` for `python_version` / `platform` (metadata only, no wheel
    downloads) and return the pins; raise PlanResolutionError naming the cell and quoting the resolver."""
    requirements = [r for r in plan.requirements if not _is_plugin_line(r)]
    with tempfile.TemporaryDirectory(prefix="vllmcompat-plan-") as tmp:
        req, ovr = Path(tmp, "requirements.in"), Path(tmp, "overrides.txt")
        req.write_text("\n".join(requirements) + "\n")
        cmd = [*uv_command(), "pip", "compile", "--quiet", "--no-header", "--no-annotate",
               "--python-version", python_version, "--python-platform", platform, str(req)]
        if plan.overrides:
            ovr.write_text("\n".join(plan.overrides) + "\n")
            cmd += ["--override", str(ovr)]
        started = time.monotonic()
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise PlanResolutionError(plan.cell, f"uv pip compile did not finish within {timeout:.0f} s", cmd) from None
        seconds = time.monotonic() - started
    if out.returncode != 0:
        message = (out.stderr.strip() or out.stdout.strip() or f"uv exited with {out.returncode}")
        raise PlanResolutionError(plan.cell, message, cmd)
    pins = {}
    for line in out.stdout.splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line and not line.startswith("-"):
            name, version = line.split("==", 1)
            pins[_normalize_name(name.split("[", 1)[0].strip())] = version.split(";", 1)[0].strip()
    return ResolvedPlan(plan.cell, python_version, platform, pins, seconds)


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
