"""Installing a cell with no index: VLLMCOMPAT_WHEELHOUSE=DIR, a folder of wheels made by
`python -m pytest_vllmcompat wheelhouse` (install/wheelhouse.py) with its manifest.json.

The manifest holds the cell's lock (every pin of its resolution, made for the destination's Python and platform);
the cell installs that lock with `uv pip install --offline --no-index --find-links DIR --no-deps`, less what the
host already has at the locked version when the cell sees the host's packages (VLLMCOMPAT_HOST_TORCH). A missing
wheel fails with uv's message and a line naming the wheelhouse and the cell.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from ..errors import VllmcompatError, WheelhouseError
from ..matrix import Cell, Matrix
from . import cpu_pins, index
from .resolve import Lock

WHEELHOUSE_ENV = "VLLMCOMPAT_WHEELHOUSE"
MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA = 1


def wheelhouse_dir(env: dict[str, str] | os._Environ[str] = os.environ) -> Path | None:
    value = (env.get(WHEELHOUSE_ENV) or "").strip()
    if not value:
        return None
    path = Path(value).expanduser().resolve()
    if not (path / MANIFEST_NAME).is_file():
        raise WheelhouseError(f"{WHEELHOUSE_ENV}={value}: no wheelhouse there ({path / MANIFEST_NAME} does not "
                              "exist; rejoin the pieces first: python -m pytest_vllmcompat wheelhouse --rejoin "
                              f"PIECE... --into {value})")
    return path


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WheelhouseError(f"{path}: not a wheelhouse manifest ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != MANIFEST_SCHEMA or "cell" not in data:
        raise WheelhouseError(f"{path}: not a wheelhouse manifest of schema {MANIFEST_SCHEMA}")
    return data


def uv_args(directory: Path) -> list[str]:
    """`uv pip install` arguments that install from the wheelhouse alone (build requirements too)."""
    return ["--offline", "--no-index", "--find-links", str(directory)]


def missing_line(directory: Path, cell: Cell) -> str:
    return (f"the wheelhouse {directory} ({WHEELHOUSE_ENV}) lacks a wheel that {cell.session} ({cell}) installs: "
            "see uv's message above; make it again with `python -m pytest_vllmcompat wheelhouse` for this cell and "
            "this destination (its --have: what the destination already has)")


def manifest_cells(target: str, env: dict[str, str] | os._Environ[str] = os.environ
                   ) -> tuple[str, str, tuple[tuple[str, tuple[str, ...]], ...]] | None:
    """(declared vLLM range, source, cells) of `target` as recorded in the wheelhouse, so a derived matrix needs no
    index offline; None without a wheelhouse or for another target."""
    directory = wheelhouse_dir(env)
    if directory is None:
        return None
    data = read_manifest(directory)
    recorded = data.get("target_cells") or {}
    if data["cell"].get("target") != target or not recorded:
        return None
    cells = tuple((v, tuple(lines)) for v, lines in recorded["cells"])
    return recorded["vllm_range"], f"{recorded['source']}, recorded in {directory / MANIFEST_NAME}", cells


@dataclass(frozen=True)
class CellInstall:
    """What one cell installs with --no-deps: its lock less what the host has and less what was left out."""

    cell: Cell
    pins: dict[str, str]  # the whole resolution (normalized name -> version), excluded ones removed
    reused: dict[str, str]  # from the host, at the locked version
    carried: dict[str, tuple[str, str]]  # the host has it at another version: name -> (host's, cell's)
    excluded: dict[str, str]  # name -> why
    source: str  # where the lock came from

    @property
    def requirements(self) -> list[str]:
        return [f"{n}=={v}" for n, v in sorted(self.pins.items()) if n not in self.reused]

    def write(self, directory: Path) -> list[str]:
        """Write the lock to install; return the `uv pip install` arguments (with --no-deps)."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "cell-lock.txt"
        path.write_text("\n".join(self.requirements) + "\n")
        return ["--no-deps", "-r", str(path)]

    def carried_lines(self) -> list[str]:
        return [f"carried: host has {n}=={h}, cell needs {n}=={c}" for n, (h, c) in sorted(self.carried.items())]

    def left_out_lines(self) -> list[str]:
        return [f"left out: {n} ({why})" for n, why in sorted(self.excluded.items())]

    def summary(self) -> list[str]:
        lines = [f"lock: {len(self.pins)} distributions ({self.source}); {len(self.requirements)} installed, "
                 f"{len(self.reused)} from the host"]
        return lines + self.carried_lines() + self.left_out_lines()


def split_host(pins: dict[str, str], have: dict[str, str]) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """(reused: the host has it at the locked version, carried: the host has another version)."""
    have = {canonicalize_name(n): v for n, v in have.items()}
    reused, carried = {}, {}
    for name, version in pins.items():
        if name not in have:
            continue
        if _same(have[name], version):
            reused[name] = version
        else:
            carried[name] = (have[name], version)
    return reused, carried


def _same(host: str, locked: str) -> bool:
    try:
        return Version(host) == Version(locked)
    except InvalidVersion:
        return host == locked


def from_lock(lock: Lock, have: dict[str, str], source: str) -> CellInstall:
    reused, carried = split_host(lock.pins, have)
    return CellInstall(lock.resolved.cell, lock.pins, reused, carried, dict(lock.excluded), source)


def from_manifest(directory: Path, cell: Cell, have: dict[str, str]) -> CellInstall:
    """The cell's install from the wheelhouse's lock; refuses a wheelhouse made for another cell."""
    data = read_manifest(directory)
    made = data["cell"]
    if (made.get("session"), made.get("lane"), made.get("target")) != (cell.session, cell.lane, cell.target):
        raise WheelhouseError(f"the wheelhouse {directory} ({WHEELHOUSE_ENV}) was made for {made.get('session')} "
                              f"[{made.get('lane')}] {made.get('target')}, not for {cell.session} [{cell.lane}] "
                              f"{cell.target}")
    pins = dict(data["lock"])
    reused, carried = split_host(pins, have)
    return CellInstall(cell, pins, reused, carried, dict(data.get("excluded", {})),
                       f"the wheelhouse {directory}")


def reuse_host_torch(todo: CellInstall) -> CellInstall:
    """torch from the host (its check passed: install/host_torch.py), also where its version carries a local part
    the lock's has not (`2.11.0+cu130` for `2.11.0`)."""
    if "torch" not in todo.carried:
        return todo
    carried = dict(todo.carried)
    _, version = carried.pop("torch")
    return replace(todo, reused={**todo.reused, "torch": version}, carried=carried)


def declared_torch(matrix: Matrix, cell: Cell, wheelhouse: Path | None) -> str | None:
    """The torch a cell will pin, known without resolving: the wheelhouse's lock, vLLM's own `torch==` (cuda lane,
    wheel METADATA, cached), the CPU lane's pins. None when not known before the resolution (or offline)."""
    try:
        if wheelhouse is not None:
            data = read_manifest(wheelhouse)
            same = (data["cell"].get("vllm"), data["cell"].get("lane")) == (cell.vllm, cell.lane)
            return data["lock"].get("torch") if same else None
        if cell.lane == "cpu":
            return cpu_pins.pins_for(matrix, cell.vllm).torch
        for line in index.metadata("vllm", cell.vllm).get_all("Requires-Dist") or []:
            req = Requirement(line)
            pinned = [s.version for s in req.specifier if s.operator == "=="]
            if canonicalize_name(req.name) == "torch" and pinned and (req.marker is None or req.marker.evaluate()):
                return pinned[0]
    except (VllmcompatError, ValueError):
        return None
    return None
