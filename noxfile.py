"""Sessions generated from matrix/support.toml. Thin: install logic lives in pytest_vllmcompat.install.

  nox -l                      list the cells
  nox -s vllm-0.11.1          both transformers cells of vLLM 0.11.1
  nox -s "vllm-0.11.1(tf5)"   one cell
  nox -s vllm-0.11.1 -- --vllm-mode=server -x   pytest arguments after --
  VLLMCOMPAT_LANE=cpu|cuda    force the lane (default: cuda when a GPU is visible)
  VLLMCOMPAT_TARGET=trl==0.28.0 or /path/to/trl   backend target (default: the matrix's); the cells follow
                              it: the seed matrix for its targets, else the target's declared vLLM range
  VLLMCOMPAT_WHEELHOUSE=DIR   install the cell with no index, from a wheelhouse (python -m pytest_vllmcompat wheelhouse)
  VLLMCOMPAT_HOST_TORCH=1     reuse python3's torch (or =/path/to/python's), only when it is the cell's torch
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nox
import nox.command

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # the harness's own code, usable before it is installed anywhere

from pytest_vllmcompat import host, matrix  # noqa: E402
from pytest_vllmcompat.errors import VllmcompatError  # noqa: E402
from pytest_vllmcompat.install import host_torch, offline, resolve  # noqa: E402
from pytest_vllmcompat.install import plan as install  # noqa: E402
from pytest_vllmcompat.install.resolve import check_resolvable  # noqa: E402
from pytest_vllmcompat.install.target_range import target_matrix  # noqa: E402


def _settings() -> tuple[matrix.Matrix, str, str, str]:
    """The matrix, the lane and the backend target, validated before nox creates or deletes any environment:
    a bad value stops here with its message alone (no traceback), naming the file and key or the variable."""
    try:
        the_matrix = matrix.load()
        lane = host.resolve_lane()
        target = install.check_target(the_matrix, os.environ.get(install.TARGET_ENV))
        if os.environ.get(install.TARGET_ENV) and not matrix.is_local_target(target) and not offline.wheelhouse_dir():
            check_resolvable(target, the_matrix.python)
        # The cells follow the target: the seed matrix for its targets, else the target's declared vLLM range.
        the_matrix, cells = target_matrix(the_matrix, target)
    except (VllmcompatError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    return the_matrix, lane, target, cells.source


def _offline() -> tuple[Path | None, host_torch.HostPython | None]:
    """VLLMCOMPAT_WHEELHOUSE and VLLMCOMPAT_HOST_TORCH, read once (a wrong value stops here, one line)."""
    try:
        wheelhouse, python = offline.wheelhouse_dir(), host_torch.requested()
        return wheelhouse, host_torch.read(python) if python else None
    except VllmcompatError as exc:
        raise SystemExit(f"error: {exc}") from None


MATRIX, LANE, TARGET, CELLS_SOURCE = _settings()
WHEELHOUSE, HOST = _offline()
nox.options.default_venv_backend = "uv"
nox.options.sessions = ["self-test"]
# Give pytest time to stop its servers on Ctrl-C before nox escalates.
PYTEST_INTERRUPT_TIMEOUT = 60.0
RESULTS = ROOT / "results"  # each cell run writes its JSON result here; the gate session reads them


@nox.session(name="self-test", python=MATRIX.python)
def self_test(session: nox.Session) -> None:
    """The plugin's own checks: ruff, mypy, and its tests (no vLLM, torch or backend needed)."""
    session.install("-e", f"{ROOT}[dev]")
    # tests/plugin/test_version_gate.py imports each released backend's trl.import_utils (installed there with
    # --no-deps); TRL 0.28.0's imports transformers. No torch is needed for that.
    session.install(MATRIX.transformers["4"])
    session.run("ruff", "check", "pytest_vllmcompat", "tests", "noxfile.py")
    session.run("mypy")
    session.run("pytest", "tests/plugin", *session.posargs)


@nox.session(name="plans", python=MATRIX.python)
def plans(session: nox.Session) -> None:
    """Resolve the CUDA lane's install plans of every cell with uv, without a GPU.

    Metadata only; fails naming the cell and quoting the resolver when one no longer resolves.
    Target: VLLMCOMPAT_TARGET or the matrix's."""
    session.install("-e", f"{ROOT}[dev]")
    session.run("python", "-m", "pytest_vllmcompat", "plan", "--lane", "cuda", "--check", "--target", TARGET,
                *session.posargs)


@nox.session(name="gate", python=MATRIX.python)
def gate(session: nox.Session) -> None:
    """Release gate over results/*.json: writes support.md and support.html, fails on missing or failed cells.

    Default: all CPU-lane cells of the matrix's default target. `nox -s gate -- --lane cuda --require present` etc."""
    session.install("-e", str(ROOT))
    session.run("python", "-m", "pytest_vllmcompat", "gate", "--results", str(RESULTS), *session.posargs)


def _host_torch_refusal(version: str) -> str | None:
    """Why the host's torch cannot serve vLLM `version`'s cells, decided before nox creates or deletes anything
    (the torch that vLLM's metadata or the wheelhouse pins); None: allowed, or known only after the resolution."""
    if HOST is None:
        return None
    cell = MATRIX.cell(version, MATRIX.lines(version)[0], LANE, TARGET)
    try:
        pin = offline.declared_torch(MATRIX, cell, WHEELHOUSE)
        if pin is not None:
            host_torch.check(LANE, pin, HOST, f"vLLM {version}")
    except VllmcompatError as exc:
        return str(exc)
    return None


def _install_locked(session: nox.Session, cell: matrix.Cell, plan: install.InstallPlan) -> None:
    """The cell's lock with --no-deps, from the wheelhouse (no index) and/or less the host's packages."""
    have = HOST.packages if HOST else {}
    try:
        if WHEELHOUSE:
            todo = offline.from_manifest(WHEELHOUSE, cell, have)
        else:
            assert HOST is not None
            lock = resolve.resolve_lock(plan, HOST.version, f"x86_64-manylinux_{host.dotted(host.host_glibc()).replace('.', '_')}",
                                        prefer=have, extra=install.project_requirements()[0])
            todo = offline.from_lock(lock, have, "resolved here, preferring the host's versions")
        if HOST:
            session.log(host_torch.check(cell.lane, todo.pins.get("torch"), HOST, cell))
            todo = offline.reuse_host_torch(todo)
    except VllmcompatError as exc:
        session.error(str(exc))
    for line in todo.summary():
        session.log(line)
    if HOST:  # the host's site-packages, after the cell's own
        purelib = Path(session.virtualenv.location, "lib", f"python{HOST.version}", "site-packages")
        (purelib / host_torch.PTH_NAME).write_text(host_torch.pth_text(HOST))
    index = offline.uv_args(WHEELHOUSE) if WHEELHOUSE else []
    try:
        session.install(*index, *todo.write(Path(session.create_tmp()) / "plan"))
        session.install(*index, "--no-deps", "-e", str(ROOT))
    except nox.command.CommandFailed:
        if WHEELHOUSE:
            session.error(offline.missing_line(WHEELHOUSE, cell))
        raise


def _cell_session(version: str):
    lines = MATRIX.lines(version)
    refusal = _host_torch_refusal(version)
    python = HOST.python if HOST else MATRIX.python  # the host's torch: a venv of the host's interpreter

    @nox.session(name=f"vllm-{version}", python=None if refusal else python, tags=["cell"],  # CI: nox -l --json -t cell
                 venv_backend="none" if refusal else None)  # refused: nothing is created or deleted
    @nox.parametrize("transformers", list(lines), ids=[f"tf{t}" for t in lines])
    def cell_session(session: nox.Session, transformers: str) -> None:
        if refusal:
            session.error(refusal)
        cell = MATRIX.cell(version, transformers, LANE, TARGET)
        plan = install.install_plan(MATRIX, cell)
        session.log(f"cell: {cell}")
        if WHEELHOUSE or HOST:
            _install_locked(session, cell, plan)
        else:
            session.install(*plan.write(Path(session.create_tmp()) / "plan"))
        for step in plan.post_install:  # an install step: runs with --install-only, skipped with -R
            session.run_install("python", *step)
        session.run("python", "-m", "pytest_vllmcompat", "versions")
        env = {host.LANE_ENV: cell.lane, install.TARGET_ENV: cell.target}
        session.run(  # python -m: with the host's packages, a `pytest` script on PATH may be the host's
            "python", "-m", "pytest", "tests/compat", "--vllm-results", str(RESULTS), *session.posargs,
            env=env, interrupt_timeout=PYTEST_INTERRUPT_TIMEOUT, terminate_timeout=30.0,
        )

    cell_session.__doc__ = (f"vLLM {version} with transformers {' and '.join(lines)} on the {LANE} lane, backend "
                            f"{TARGET} (cells from {CELLS_SOURCE})." + (f" Refused: {refusal}" if refusal else ""))
    return cell_session


for _version in MATRIX.vllm_versions:
    globals()[f"vllm_{_version.replace('.', '_')}"] = _cell_session(_version)
