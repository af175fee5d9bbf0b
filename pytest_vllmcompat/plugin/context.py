"""The run's context: which matrix cell this environment is, and what is expected of it.

Built once in `pytest_configure` from metadata only (no heavy imports).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from .. import host, matrix
from ..errors import VllmcompatError
from ..install import engine_route, host_torch
from ..install import installed as cellinfo
from ..install.target_range import target_matrix
from ..matrix import Cell, Matrix
from . import settings as config

NO_TARGET = "trl (not installed)"  # the target label when none is given and the backend is not installed


@dataclass(frozen=True)
class Context:
    matrix: Matrix | None
    matrix_problem: str  # why there is no matrix / no cell, for the header
    cell: Cell | None
    lane: str
    target: str
    modes: tuple[str, ...]
    model: Path | None  # --vllm-model, or None for the built-in tiny model
    cache_dir: Path
    startup_timeout: float

    def header(self) -> list[str]:
        v = cellinfo.versions()
        lines = [
            f"vllmcompat cell: {self.cell.session if self.cell else 'not a matrix cell'}"
            f" | lane {self.lane} | target {self.target} | modes {', '.join(self.modes)}",
            f"vllmcompat versions: {cellinfo.vllm_description()} | torch {v['torch'] or '-'}"
            f" | transformers {v['transformers'] or '-'} | trl {v['trl'] or '-'}",
            f"vllmcompat engine: {engine_route.description()}",
            f"vllmcompat model: {self.model or f'built-in tiny model (cache {self.cache_dir})'}",
        ]
        if host_torch.torch_source() == "host":
            lines.append(f"vllmcompat torch: torch from the host ({v['torch']}, {host_torch.torch_location()})")
        if self.matrix_problem:
            lines.append(f"vllmcompat matrix: {self.matrix_problem}")
        return lines

    def engine_blocker(self) -> str | None:
        """Why this host cannot start an engine for this cell (None: it can)."""
        if self.matrix is None or self.cell is None:
            if self.lane == "cpu":
                return self.unexecutable()
            return None if host.gpu_count() else f"the {self.lane} lane needs a GPU"
        return engine_route.engine_blocker(self.matrix, self.cell)

    def unexecutable(self) -> str | None:
        """Why no test of this cell can run in this process (its vllm/_C would kill it: SIGILL), else None."""
        return engine_route.unexecutable(self.lane, str(self.cell) if self.cell else "this environment")


def target_mismatch(target: str, installed: str | None) -> str | None:
    """Why this environment cannot stand for `target`: a pinned release (`trl==X`) that is not the installed one,
    e.g. a cell environment built for another target and reused with `nox -R` (its results would carry the wrong
    target). None when it can (or the target is not a pin: a local checkout, a range)."""
    name, sep, version = target.partition("==")
    if not sep or name.split("[")[0].strip().lower() != "trl" or installed == version.strip():
        return None
    return (f"target {target}, but this environment has trl {installed or '(not installed)'}: it was built for "
            "another target. Rebuild the cell (`nox -s SESSION` without -R/-r) with VLLMCOMPAT_TARGET set to the "
            "target you mean. Nothing was run and no result was written.")


def build(cfg: pytest.Config) -> Context:
    lane = host.resolve_lane(config.resolve(cfg, "vllm_lane"))
    model_opt, model_source = config.resolve_with_source(cfg, "vllm_model")
    model = Path(model_opt).expanduser().resolve() if model_opt else None
    if model is not None and not (model / "config.json").is_file():
        shown = f"{model_source} {model_opt}" if model_source.startswith("--") else f"{model_source}={model_opt}"
        raise pytest.UsageError(f"{shown}: no model there ({model / 'config.json'} does not exist)")
    trl_version = cellinfo.installed("trl")
    target = config.resolve(cfg, "vllm_target") or (f"trl=={trl_version}" if trl_version else NO_TARGET)
    refusal = target_mismatch(target, trl_version)
    if refusal:
        raise pytest.UsageError(refusal)

    the_matrix, cell, problem = None, None, ""
    try:
        the_matrix = matrix.load()
    except matrix.MatrixError as exc:
        if matrix.matrix_path() != matrix.DEFAULT_PATH:  # the user pointed at a matrix: it must load
            raise pytest.UsageError(str(exc)) from None
        problem = f"no matrix ({exc}); no known failures applied"
    vllm_version, tf_line = cellinfo.installed("vllm"), cellinfo.transformers_line()
    if the_matrix is not None and target == NO_TARGET:  # nothing to look a later release's range up by
        problem = "trl is not installed and no --vllm-target was given: no backend target, no known failures applied"
    elif the_matrix is not None and vllm_version not in the_matrix.vllm_versions and target not in the_matrix.targets:
        try:  # a later release of the backend: the cells of its own declared range (the index, cached by nox -l)
            the_matrix, _ = target_matrix(the_matrix, target)
        except VllmcompatError as exc:
            problem = f"the cells of {target} are unknown here ({exc}); no known failures applied"
    if the_matrix is not None and not problem:
        if vllm_version in the_matrix.vllm_versions and tf_line in the_matrix.lines(vllm_version):
            cell = the_matrix.cell(vllm_version, tf_line, lane, target)
        else:
            problem = (
                f"vLLM {vllm_version or 'not installed'} / transformers line {tf_line or '-'} is not a cell of "
                f"{the_matrix.path} (vLLM {', '.join(the_matrix.vllm_versions)}; lines {', '.join(the_matrix.transformers)})"
            )
    return Context(
        matrix=the_matrix,
        matrix_problem=problem,
        cell=cell,
        lane=lane,
        target=target,
        modes=config.selected_modes(cfg),
        model=model,
        cache_dir=Path(config.resolve(cfg, "vllm_cache_dir")).expanduser(),
        startup_timeout=config.resolve(cfg, "vllm_startup_timeout"),
    )
