"""The cells of a backend target: the seed matrix for its declared targets, else the target's own declared range.

For a target outside `[backend] targets` (another release, or a checkout), the cells are read, not written down:
  vLLM versions      the target's `vllm` extra (`Requires-Dist: vllm...; extra == "vllm"` of the release's wheel,
                     or `[project.optional-dependencies] vllm` of a checkout's pyproject.toml), intersected with
                     vLLM's final releases on the index;
  transformers lines each line of `[transformers]` whose requirement some transformers release satisfies together
                     with that vLLM release's own transformers requirement and the target's.
The seed matrix stays exactly as written for its targets (it runs transformers 5 with vLLM < 0.12 on purpose,
overriding their `transformers<5`); a derived matrix follows the declarations.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from email.message import Message
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from ..errors import MatrixError
from ..matrix import Matrix, is_local_target
from . import index, offline

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class TargetCells:
    target: str
    vllm_range: str  # the declared specifier, e.g. ">=0.10.2,<=0.17.1"
    source: str  # where the range (and so the cells) came from
    cells: tuple[tuple[str, tuple[str, ...]], ...]  # (vLLM version, transformers lines), oldest first

    @property
    def versions(self) -> tuple[str, ...]:
        return tuple(v for v, _ in self.cells)

    def lines(self, version: str) -> tuple[str, ...]:
        return dict(self.cells)[version]


def cells_for_target(matrix: Matrix, target: str) -> TargetCells:
    if target in matrix.targets or target == matrix.default_target:
        return TargetCells(target, matrix.supported_vllm, f"{matrix.path.name} (the seed matrix of its targets)",
                           tuple((v, tuple(matrix.transformers)) for v in matrix.vllm_versions))
    recorded = offline.manifest_cells(target)  # a wheelhouse (VLLMCOMPAT_WHEELHOUSE) carries its target's cells
    if recorded is not None:
        return TargetCells(target, *recorded)
    base, extra, source = _declared_requirements(matrix, target)
    vllm_req = _named(extra, "vllm")
    if vllm_req is None or not str(vllm_req.specifier):
        raise MatrixError(f"{target}: declares no vLLM range in its `{matrix.backend_vllm_extra}` extra ({source}); "
                          "the matrix of a target follows that range")
    own_tf = _named(base, "transformers")
    transformers = index.releases("transformers")
    cells = []
    for version in index.releases("vllm"):
        if version not in vllm_req.specifier:
            continue
        vllm_tf = _named(_split(_requires(index.metadata("vllm", str(version))), "")[0], "transformers")
        lines = tuple(line for line, spec in matrix.transformers.items()
                      if _any_release(transformers, Requirement(spec).specifier, vllm_tf, own_tf))
        if lines:
            cells.append((str(version), lines))
    if not cells:
        raise MatrixError(f"{target}: no released vLLM satisfies its declared range {vllm_req.specifier} ({source})")
    return TargetCells(target, str(vllm_req.specifier), source, tuple(cells))


def target_matrix(matrix: Matrix, target: str) -> tuple[Matrix, TargetCells]:
    """`matrix` restricted to `target`'s cells (the seed matrix itself for its targets)."""
    found = cells_for_target(matrix, target)
    if found.versions == matrix.vllm_versions and all(lines == tuple(matrix.transformers) for _, lines in found.cells):
        return matrix, found
    return replace(matrix, vllm_versions=found.versions, cell_lines=dict(found.cells)), found


def _any_release(releases: list[Version], line: SpecifierSet, *reqs: Requirement | None) -> bool:
    specs = [line, *(r.specifier for r in reqs if r is not None)]
    return any(all(v in s for s in specs) for v in releases)


def _requires(meta: Message) -> list[Requirement]:
    return [Requirement(r) for r in meta.get_all("Requires-Dist") or []]


def _split(requirements: list[Requirement], extra: str) -> tuple[list[Requirement], list[Requirement]]:
    """(unconditional requirements, those of `extra` only)."""
    base = [r for r in requirements if r.marker is None]
    only = [r for r in requirements if r.marker is not None and extra
            and r.marker.evaluate({"extra": extra}) and not r.marker.evaluate({"extra": ""})]
    return base, only


def _named(requirements: list[Requirement], name: str) -> Requirement | None:
    return next((r for r in requirements if canonicalize_name(r.name) == canonicalize_name(name)), None)


def _declared_requirements(matrix: Matrix, target: str) -> tuple[list[Requirement], list[Requirement], str]:
    """(the target's unconditional requirements, its backend extra's, where they were read)."""
    extra = matrix.backend_vllm_extra
    if is_local_target(target):
        pyproject = Path(target).expanduser() / "pyproject.toml"
        try:
            project = tomllib.loads(pyproject.read_text()).get("project", {})
            base = [Requirement(r) for r in project.get("dependencies", [])]
            only = [Requirement(r) for r in project.get("optional-dependencies", {}).get(extra, [])]
        except (OSError, tomllib.TOMLDecodeError, InvalidRequirement) as exc:
            raise MatrixError(f"{target}: cannot read the declared vLLM range from {pyproject} ({exc})") from None
        return base, only, f"{pyproject} [project.optional-dependencies] {extra}"
    try:
        req = Requirement(target)
    except InvalidRequirement as exc:
        raise MatrixError(f"{target}: not a requirement ({exc})") from None
    pinned = [s.version for s in req.specifier if s.operator in ("==", "===") and "*" not in s.version]
    if not pinned:
        raise MatrixError(f"{target}: pin one release (e.g. {req.name}==1.0.0) or give a checkout; a range has no "
                          "single declared vLLM range")
    base, only = _split(_requires(index.metadata(req.name, pinned[0])), extra)
    return base, only, f"{req.name} {pinned[0]} wheel METADATA (Requires-Dist: ...; extra == \"{extra}\")"
