"""`python -m pytest_vllmcompat wheelhouse`: exactly the wheels one cell needs on a destination without an index.

The cell's plan (install/plan.py, overrides included) plus this project's own dependencies is resolved with
`uv pip compile` for the destination's Python and platform, preferring the versions the destination already has
(`--have`, its `pip list --format=freeze`) where they fit. A distribution the destination has at the locked version
is dropped (the cell reuses it: VLLMCOMPAT_HOST_TORCH); one it has at another version is carried. `--exclude`
leaves out distributions (and what only they require). Added, never dropped: the build backend of this checkout
(its editable install builds in an isolated environment) and nox with its dependencies (the runner's own venv).
Wheels come from the index (PEP 691 file lists, sha256 checked), best tag for the destination first, cached; a
distribution published only as source is built into a wheel here (wheel_from_sdist).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging import tags
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from ..errors import WheelhouseError
from ..matrix import Cell, Matrix
from . import index, offline, pieces, resolve
from .plan import InstallPlan, install_plan, project_requirements
from .target_range import target_matrix

RUNNER = ("nox>=2024.10.9",)


@dataclass(frozen=True)
class Destination:
    python_version: str  # "3.12"
    arch: str  # "x86_64"
    glibc: tuple[int, int]  # (2, 39)

    @property
    def uv_platform(self) -> str:
        return f"{self.arch}-manylinux_{self.glibc[0]}_{self.glibc[1]}"

    @property
    def platforms(self) -> list[str]:
        """Platform tags it installs, best first (manylinux_2_39 ... 2_17, the legacy aliases, plain linux)."""
        major, minor = self.glibc
        names = [f"manylinux_{major}_{m}_{self.arch}" for m in range(minor, 16, -1)]
        legacy = {(2, 17): "manylinux2014", (2, 12): "manylinux2010", (2, 5): "manylinux1"}
        return names + [f"{name}_{self.arch}" for level, name in legacy.items() if level <= self.glibc] + [
            f"linux_{self.arch}"]

    def tags(self) -> list[tags.Tag]:
        version = tuple(int(x) for x in self.python_version.split("."))
        return [*tags.cpython_tags(version, platforms=self.platforms),
                *tags.compatible_tags(version, f"cp{version[0]}{version[1]}", self.platforms)]

    def describe(self) -> str:
        return f"CPython {self.python_version} {self.uv_platform} (glibc {self.glibc[0]}.{self.glibc[1]})"


def destination(python_version: str, platform: str) -> Destination:
    """`platform`: manylinux_2_39_x86_64, x86_64-manylinux_2_39, or `linux x86_64 glibc 2.39`."""
    m = (re.fullmatch(r"manylinux_(\d+)_(\d+)_(\w+)", platform) or re.fullmatch(r"(?P<a>\w+)-manylinux_(\d+)_(\d+)", platform)
         or re.fullmatch(r"linux[ _-](?P<a>\w+)[ ,]+glibc[ _-]?(\d+)\.(\d+)", platform))
    if not m or not re.fullmatch(r"\d+\.\d+", python_version):
        raise WheelhouseError(f"destination {python_version} / {platform}: give e.g. --python-version 3.12 "
                              "--platform manylinux_2_39_x86_64")
    a, b, c = m.groups()
    arch, major, minor = (c, a, b) if platform.startswith("manylinux") else (a, b, c)
    return Destination(python_version, arch, (int(major), int(minor)))


def read_have(path: Path) -> dict[str, str]:
    """A `pip list --format=freeze`: normalized name -> version (editable and URL lines are not versions)."""
    have: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line and not line.startswith("-") and " @ " not in line:
            name, version = line.split("==", 1)
            have[canonicalize_name(name)] = version.strip()
    return have


@dataclass(frozen=True)
class WheelPlan:
    cell: Cell
    dest: Destination
    install: offline.CellInstall  # reused = dropped (the destination has it), carried
    build: dict[str, str]
    runner: dict[str, str]
    target_cells: dict[str, Any]

    def wanted(self) -> dict[tuple[str, str], list[str]]:
        """(name, version) -> the sections that need its wheel."""
        found: dict[tuple[str, str], list[str]] = {}
        for section, pins in (("cell", {n: v for n, v in self.install.pins.items() if n not in self.install.reused}),
                              ("build", self.build), ("runner", self.runner)):
            for name, version in pins.items():
                found.setdefault((name, version), []).append(section)
        return found


def plan_wheels(seed: Matrix, lane: str, vllm: str, transformers: str, target: str, dest: Destination,
                have: dict[str, str], exclude: list[str]) -> WheelPlan:
    the_matrix, cells = target_matrix(seed, target)
    cell = the_matrix.cell(vllm, transformers, lane, target)
    own, build_requires = project_requirements()
    lock = resolve.resolve_lock(install_plan(the_matrix, cell), dest.python_version, dest.uv_platform, prefer=have,
                                exclude=exclude, extra=own)
    install = offline.from_lock(lock, have, f"resolved for {dest.describe()}")
    if _public(have.get("torch")) == _public(install.pins.get("torch")) is not None:
        install = offline.reuse_host_torch(install)  # the destination's torch: VLLMCOMPAT_HOST_TORCH there
    build, runner = (resolve.resolve_lock(InstallPlan(cell, tuple(reqs), (), ()), dest.python_version,
                                          dest.uv_platform, prefer=lock.pins).pins for reqs in (build_requires, RUNNER))
    recorded = {"vllm_range": cells.vllm_range, "source": cells.source, "cells": [list(c) for c in cells.cells]}
    return WheelPlan(cell, dest, install, build, runner, recorded)


def _public(version: str | None) -> str | None:
    return version.split("+", 1)[0] if version else None


def choose(files: list[dict[str, Any]], name: str, version: str, dest: Destination) -> dict[str, Any]:
    """The index file uv would install on `dest`: the wheel whose best tag ranks first."""
    rank = {tag: i for i, tag in enumerate(dest.tags())}
    best: tuple[int, dict[str, Any]] | None = None
    for f in files:
        try:
            wheel_tags = parse_wheel_filename(f["filename"])[3]
        except InvalidWheelFilename:
            continue
        score = min((rank[t] for t in wheel_tags if t in rank), default=None)
        if score is not None and (best is None or score < best[0]):
            best = (score, f)
    if best is None:
        shown = ", ".join(f["filename"] for f in files) or "none"
        raise WheelhouseError(f"{name}=={version}: no wheel for {dest.describe()} on the index (its wheels: {shown})")
    return best[1]


def fetch(plan: WheelPlan, cache: Path, workers: int = 8) -> list[dict[str, Any]]:
    """Download (or take from `cache`) every wanted wheel, sha256-checked; the manifest's file entries."""
    def one(item: tuple[tuple[str, str], list[str]]) -> dict[str, Any]:
        (name, version), sections = item
        wheels = index.wheel_files(name, version)
        sdist = None if wheels else index.sdist_file(name, version)
        if sdist is not None:  # published as source only (DeepSpeed)
            built, source = wheel_from_sdist(name, version, sdist, cache, plan.dest)
            return {"name": name, "version": version, "filename": built.name, "sha256": pieces.sha256(built),
                    "size": built.stat().st_size, "sections": sections, "built_from": source}
        path, digest = cached_download(choose(wheels, name, version, plan.dest), cache)
        return {"name": name, "version": version, "filename": path.name, "sha256": digest,
                "size": path.stat().st_size, "sections": sections}

    with ThreadPoolExecutor(workers) as pool:
        return sorted(pool.map(one, plan.wanted().items()), key=lambda e: e["filename"])


def cached_download(entry: dict[str, Any], cache: Path) -> tuple[Path, str]:
    """(the file, its sha256) of an index file entry: taken from `cache` if its sha256 is the index's, else
    downloaded there; a download whose sha256 is not the index's is refused."""
    path = cache / entry["filename"]
    expected = entry.get("hashes", {}).get("sha256")
    if not (path.is_file() and (expected is None or pieces.sha256(path) == expected)):
        index.download(entry["url"], path)
    digest = pieces.sha256(path)
    if expected and digest != expected:
        raise WheelhouseError(f"{path.name}: downloaded sha256 {digest} is not the index's {expected}")
    return path, digest


def wheel_from_sdist(name: str, version: str, sdist: dict[str, Any], cache: Path,
                     dest: Destination) -> tuple[Path, dict[str, str]]:
    """(the wheel, its source's filename and sha256) for a distribution the index has only as source: built here with
    `uv build --wheel` (what uv would do at install, which the destination cannot: no index for the build backend),
    kept only if it fits the destination. A pure-Python wheel does (DeepSpeed builds one: its CUDA ops are compiled
    at run time); a wheel with parts compiled here is refused."""
    source, digest = cached_download(sdist, cache)
    out = cache / "built" / f"{source.name}-{digest[:12]}"
    if not list(out.glob("*.whl")):
        done = subprocess.run([*resolve.uv_command(), "build", "--wheel", "--out-dir", str(out), str(source)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
            raise WheelhouseError(f"{name}=={version}: the index has only {source.name}, and building its wheel "
                                  f"failed (uv build, exit {done.returncode}):\n{tail}")
    (wheel,) = out.glob("*.whl")
    choose([{"filename": wheel.name}], name, version, dest)  # raises unless its tags fit the destination
    kept = cache / wheel.name
    shutil.copy2(wheel, kept)
    return kept, {"sdist": source.name, "sha256": digest}


def manifest(plan: WheelPlan, files: list[dict[str, Any]], have_source: str, exclude: list[str]) -> dict[str, Any]:
    inst = plan.install
    return {
        "schema": offline.MANIFEST_SCHEMA, "made": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cell": {"session": plan.cell.session, "lane": plan.cell.lane, "vllm": plan.cell.vllm,
                 "transformers": plan.cell.transformers, "target": plan.cell.target},
        "destination": {"python_version": plan.dest.python_version, "platform": plan.dest.uv_platform,
                        "have": have_source, "exclude": exclude},
        "target_cells": plan.target_cells,
        "lock": dict(sorted(inst.pins.items())), "excluded": dict(sorted(inst.excluded.items())),
        "dropped": dict(sorted(inst.reused.items())),
        "carried": inst.carried_lines(),
        "build": plan.build, "runner": plan.runner, "files": files, "total_bytes": sum(f["size"] for f in files),
        "rejoin": {"python": "python3 -m pytest_vllmcompat wheelhouse --rejoin PIECE_DIR... --into DIR",
                   "shell": f"sh PIECE_DIR/{pieces.SHELL_NAME} DIR PIECE_DIR...  (checks {pieces.SUMS_NAME})"},
        "install": {"runner": "uv venv /tmp/runner && uv pip install -p /tmp/runner --offline --no-index "
                              "--find-links DIR nox",
                    "cell": f"VLLMCOMPAT_WHEELHOUSE=DIR VLLMCOMPAT_HOST_TORCH=1 VLLMCOMPAT_LANE={plan.cell.lane} "
                            f"VLLMCOMPAT_TARGET={plan.cell.target} /tmp/runner/bin/nox -s \"{plan.cell.session}\""},
    }


def write(plan: WheelPlan, files: list[dict[str, Any]], cache: Path, out: Path, data: dict[str, Any],
          split_bytes: int | None) -> list[Path]:
    """The wheelhouse in `out` (flat), or its pieces out/piece-NN; returns the folders written."""
    sources = [cache / f["filename"] for f in files]
    if split_bytes:
        return pieces.split(sources, out, split_bytes, data)
    out.mkdir(parents=True, exist_ok=True)
    for source, entry in zip(sources, data["files"]):
        shutil.copy2(source, out / source.name)
        entry["parts"] = [source.name]
    pieces.write_manifest(out, data)
    return [out]


def lines(plan: WheelPlan, data: dict[str, Any], folders: list[Path]) -> list[str]:
    inst = plan.install
    out = [f"wheelhouse for {plan.cell.session} [{plan.cell.lane}] {plan.cell.target} on {plan.dest.describe()}",
           f"lock: {len(inst.pins)} distributions; {len(data['files'])} wheels, {data['total_bytes'] / 2**20:.1f} MiB",
           f"dropped (the destination has them at the locked version): {len(inst.reused)}: "
           + " ".join(f"{n}=={v}" for n, v in sorted(inst.reused.items()))]
    out += inst.carried_lines() + inst.left_out_lines()
    out += [f"{folder}: {sum(f.stat().st_size for f in folder.iterdir()) / 2**20:.1f} MiB" for folder in folders]
    return out


def cache_dir() -> Path:
    return index.harness_cache() / "wheels"
