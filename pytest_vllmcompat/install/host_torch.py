"""VLLMCOMPAT_HOST_TORCH: a cell that reuses the host interpreter's preinstalled torch instead of installing one.

Allowed when, and only when, the host's torch is the cell's: the torch version the cell's resolution picks, compared
on the public version (`2.11.0+cu130` is `2.11.0`); a local part in the cell's pin (`+cu128`) must be the host's
too; on the cuda lane the host's build must be a CUDA build (`torch/version.py` names a CUDA version). Otherwise
the cell is refused before anything is created or deleted, naming both versions.

The cell's environment is a venv of the host's interpreter that sees the host's site-packages (a `.pth` file: the
host's own `python3` may itself be a venv, whose packages `--system-site-packages` would not show), and the cell
installs with --no-deps only the locked distributions the host does not have at the locked version: uv does not
count a package seen through system site-packages as installed, so constraints alone would reinstall torch.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from ..errors import HostTorchError

HOST_TORCH_ENV = "VLLMCOMPAT_HOST_TORCH"
PTH_NAME = "_vllmcompat_host.pth"

_READER = r"""
import importlib.metadata as m, importlib.util as u, json, os, site, sys
dists = {}
for d in m.distributions():
    name = d.metadata["Name"]
    if name and name.lower() not in dists:
        dists[name.lower()] = d.version
spec = u.find_spec("torch")
text = ""
if spec and spec.origin:
    try:
        text = open(os.path.join(os.path.dirname(spec.origin), "version.py")).read()
    except OSError:
        pass
dirs = [p for p in site.getsitepackages() if os.path.isdir(p)]
print(json.dumps({"version": "%d.%d" % sys.version_info[:2], "executable": sys.executable, "site": dirs,
                  "dists": dists, "torch_version_py": text}))
"""


@dataclass(frozen=True)
class HostPython:
    """The host's interpreter as the cell sees it: its packages (normalized name -> version), its site dirs."""

    python: str
    version: str  # "3.12"
    site_dirs: tuple[str, ...]
    packages: dict[str, str]
    torch_build: str | None  # torch/version.py __version__, e.g. "2.11.0+cu130"
    torch_cuda: str | None  # torch/version.py cuda, e.g. "13.0"; None: a CPU build

    @property
    def torch(self) -> str | None:
        return self.torch_build or self.packages.get("torch")


def requested(env: dict[str, str] | os._Environ[str] = os.environ) -> str | None:
    """The interpreter VLLMCOMPAT_HOST_TORCH names: `1` (yes, true) is `python3` on PATH, a path is itself;
    unset, empty or `0`: None (the cell installs its own torch)."""
    value = (env.get(HOST_TORCH_ENV) or "").strip()
    if value.lower() in ("", "0", "no", "false"):
        return None
    python = shutil.which("python3") if value.lower() in ("1", "yes", "true") else value
    if not python or not Path(python).exists():
        raise HostTorchError(f"{HOST_TORCH_ENV}={value}: no interpreter {'python3 on PATH' if not python else python}; "
                             "give 1 (python3 on PATH) or the path of the interpreter that holds torch")
    return python


def read(python: str) -> HostPython:
    """What `python` has (distribution metadata and torch/version.py only: nothing heavy is imported)."""
    try:
        out = subprocess.run([python, "-I", "-c", _READER], capture_output=True, text=True, timeout=60)
        data = json.loads(out.stdout)
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        raise HostTorchError(f"{HOST_TORCH_ENV}: cannot read the packages of {python} ({exc})") from None
    text = data["torch_version_py"]
    build = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)", text, re.M)
    cuda = re.search(r"^cuda\b[^=\n]*=\s*['\"]([^'\"]*)['\"]", text, re.M)
    packages: dict[str, str] = {canonicalize_name(n): str(v) for n, v in data["dists"].items()}
    return HostPython(python, data["version"], tuple(data["site"]), packages,
                      build.group(1) if build else None, cuda.group(1) if cuda else None)


def check(lane: str, cell_torch: str | None, host: HostPython, cell: object = "the cell") -> str:
    """Allow the host's torch for a cell whose resolution pins torch==`cell_torch`; return a line saying so.
    HostTorchError, naming both versions, when it is not the cell's."""
    where = f"{HOST_TORCH_ENV}: {cell} needs torch=={cell_torch}"
    if host.torch is None:
        raise HostTorchError(f"{where}; the host ({host.python}) has no torch")
    if cell_torch is None:
        raise HostTorchError(f"{HOST_TORCH_ENV}: {cell} installs no torch; the host's torch {host.torch} is not used")
    try:
        have, need = Version(host.torch), Version(cell_torch)
    except InvalidVersion as exc:
        raise HostTorchError(f"{where}; the host has torch {host.torch} ({exc})") from None
    if have.public != need.public or (need.local and have.local != need.local):
        raise HostTorchError(f"{where}; the host ({host.python}) has torch {host.torch}: not the cell's torch, "
                             "so it cannot be reused (unset the variable to install the cell's own)")
    if lane == "cuda" and not host.torch_cuda:
        raise HostTorchError(f"{where}; the host's torch {host.torch} ({host.python}) is not a CUDA build "
                             "(torch/version.py names no CUDA version)")
    cuda = f", CUDA {host.torch_cuda}" if host.torch_cuda else ""
    return f"torch from the host: {host.torch}{cuda} ({host.python}) for the cell's torch=={cell_torch}"


def pth_text(host: HostPython) -> str:
    """A .pth file for the cell's site-packages: the host's site dirs after the cell's own (their .pth files too)."""
    return "".join(f"import site; site.addsitedir({d!r})\n" for d in host.site_dirs)


def torch_location() -> Path | None:
    """The site dir this interpreter's torch distribution is installed in (metadata only), None without torch."""
    try:
        return Path(str(metadata.distribution("torch").locate_file(""))).resolve()
    except metadata.PackageNotFoundError:
        return None


def torch_source() -> str | None:
    """Where this interpreter's torch comes from: "cell" (inside sys.prefix), "host" (outside it: the host's, seen
    through the cell's .pth or system site-packages), None when no torch is installed."""
    location = torch_location()
    if location is None:
        return None
    prefix = Path(sys.prefix).resolve()
    return "cell" if location == prefix or prefix in location.parents else "host"
