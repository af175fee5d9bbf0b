"""The support matrix: load, validate, and answer "which cell is this?".

Everything reads `matrix/support.toml` through `load()`. Validation errors
name the file and the dotted key so a maintainer can fix them at once.
"""

from __future__ import annotations

import fnmatch
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from packaging.version import InvalidVersion, Version

from ..errors import MatrixError
from .cpu_lane import CpuPins, CpuRuntime, read_pins, read_runtime
from .reader import Reader

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

LANES = ("cpu", "cuda")
DEFAULT_PATH = Path(__file__).resolve().parents[2] / "matrix" / "support.toml"
MATRIX_ENV = "VLLMCOMPAT_MATRIX"


@dataclass(frozen=True)
class Cell:
    """One point of the matrix: a vLLM release x transformers line x lane x backend target."""

    vllm: str
    transformers: str  # the line: "4" or "5"
    lane: str
    target: str  # pip requirement or local checkout path

    @property
    def target_label(self) -> str:
        return target_label(self.target)

    @property
    def session(self) -> str:
        return f"vllm-{self.vllm}(tf{self.transformers})"

    def __str__(self) -> str:
        return f"vllm {self.vllm} / transformers {self.transformers} / {self.lane} lane / {self.target_label}"


@dataclass(frozen=True)
class KnownFailure:
    """A declared failure: the cells and tests it applies to, its cause, and `match`, a regular expression that the
    failure's text (exception type and message, chained causes included, else the report) must contain. A test
    that fails otherwise is a failure, not this known failure."""

    test: str | tuple[str, ...]  # one node-id pattern, or several
    cause: str
    match: str
    vllm: str | tuple[str, ...] = "*"  # a pattern, or several (the releases it was measured on)
    transformers: str = "*"
    lane: str = "*"
    target: str = "*"
    marker: str = ""  # only tests carrying this marker (e.g. "engine": the test needs an engine)
    upstream: str = ""

    def applies_to(self, cell: Cell, nodeid: str, markers: frozenset[str] = frozenset()) -> bool:
        pairs = [
            (cell.transformers, self.transformers),
            (cell.lane, self.lane),
            (cell.target_label, self.target),
        ]
        vllm = (self.vllm,) if isinstance(self.vllm, str) else self.vllm
        return (all(fnmatch.fnmatchcase(v, p) for v, p in pairs) and any(fnmatch.fnmatchcase(cell.vllm, p) for p in vllm)
                and any(fnmatch.fnmatchcase(nodeid, t) for t in self.tests) and (not self.marker or self.marker in markers))

    @property
    def tests(self) -> tuple[str, ...]:
        return (self.test,) if isinstance(self.test, str) else self.test

    def matches(self, failure_text: str) -> bool:
        return re.search(self.match, failure_text) is not None

    @property
    def reason(self) -> str:
        return f"known failure: {self.cause}" + (f" ({self.upstream})" if self.upstream else "")


@dataclass(frozen=True)
class Matrix:
    path: Path
    python: str
    vllm_versions: tuple[str, ...]
    transformers: dict[str, str]
    backend_name: str
    default_target: str
    targets: tuple[str, ...]
    backend_vllm_extra: str
    serve_deps: tuple[str, ...]
    supported_vllm: str
    lane_vllm_spec: dict[str, str]
    cpu_pins: dict[str, CpuPins]
    cpu_runtime: CpuRuntime | None = None  # newer C/C++ runtime for builds the host cannot load
    known_failures: tuple[KnownFailure, ...] = field(default=())
    test_tools: tuple[str, ...] = field(default=())
    backend_test_extras: tuple[str, ...] = field(default=())  # the backend's extras the suite uses (peft: LoRA runs)
    backend_cuda_test_extras: tuple[str, ...] = field(default=())  # ... on the CUDA lane only (quantization: QLoRA)
    # Transformers lines per vLLM version where not all of them apply (a target's derived matrix:
    # install/target_range.py); empty for the seed matrix.
    cell_lines: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def lines(self, vllm: str) -> tuple[str, ...]:
        return self.cell_lines.get(vllm, tuple(self.transformers))

    def cell(self, vllm: str, transformers: str, lane: str, target: str | None = None) -> Cell:
        """The declared cell for these coordinates; unknown values list the valid ones."""
        _check_choice("vLLM version", vllm, self.vllm_versions)
        _check_choice(f"transformers line of vLLM {vllm}", transformers, self.lines(vllm))
        _check_choice("lane", lane, LANES)
        return Cell(vllm, transformers, lane, target or self.default_target)

    def cells(self, lane: str, target: str | None = None) -> list[Cell]:
        return [self.cell(v, t, lane, target) for v in self.vllm_versions for t in self.lines(v)]

    def known_failures_for(self, cell: Cell, nodeid: str, markers: frozenset[str] = frozenset()) -> list[KnownFailure]:
        return [kf for kf in self.known_failures if kf.applies_to(cell, nodeid, markers)]


def _check_choice(what: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise MatrixError(f"unknown {what} {value!r}: valid are {', '.join(valid)}")


def _is_exact_version(text: str) -> bool:
    try:
        return str(Version(text)) == text
    except InvalidVersion:
        return False


def _is_release_of(target: str, backend_name: str) -> bool:
    """`target` names one exact release of the backend, e.g. trl==1.16.0 (no wildcard)."""
    name, _, version = target.partition("==")
    try:
        return name == backend_name and str(Version(version)) == version
    except InvalidVersion:
        return False


def target_label(target: str) -> str:
    """Released targets are named by their requirement; local checkouts are 'local'."""
    return "local" if is_local_target(target) else target


def is_local_target(target: str) -> bool:
    return os.sep in target or target.startswith(".") or Path(target).is_dir()


def matrix_path() -> Path:
    return Path(os.environ.get(MATRIX_ENV) or DEFAULT_PATH)


def load(path: Path | str | None = None) -> Matrix:
    path = Path(path) if path else matrix_path()
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise MatrixError(f"{path}: matrix file not found (set {MATRIX_ENV} to its path)") from None
    except tomllib.TOMLDecodeError as exc:
        raise MatrixError(f"{path}: not valid TOML: {exc}") from None
    return _Reader(path, raw).matrix()


class _Reader(Reader):
    """Reads the whole matrix."""

    def matrix(self) -> Matrix:
        top = self.get("matrix", dict)
        versions = self.strings("vllm", top, "matrix")
        if len(set(versions)) != len(versions):
            raise self.fail("matrix.vllm", f"lists a version twice: {list(versions)}")
        for i, version in enumerate(versions):
            try:
                if str(Version(version)) != version:
                    raise InvalidVersion(version)
            except InvalidVersion:
                raise self.fail(f"matrix.vllm[{i}]", f"{version!r} is not a release version (e.g. \"0.11.1\")") from None
        transformers = self.get("transformers", dict)
        for line, spec in transformers.items():
            if not isinstance(spec, str):
                raise self.fail(f"transformers.{line}", f"must be a requirement string, got {spec!r}")
        backend = self.get("backend", dict)
        targets = self.strings("targets", backend, "backend")
        default = self.get("default", str, backend, "backend")
        if default not in targets:
            raise self.fail("backend.default", f"{default!r} is not one of backend.targets {list(targets)}")
        lanes = self.get("lanes", dict)
        lane_specs = {}
        for lane in LANES:
            node = self.get(lane, dict, lanes, "lanes")
            spec = self.get("vllm", str, node, f"lanes.{lane}")
            if "{version}" not in spec:
                raise self.fail(f"lanes.{lane}.vllm", f"must contain '{{version}}', got {spec!r}")
            lane_specs[lane] = spec
        return Matrix(
            path=self.path,
            python=self.get("python", str, top, "matrix"),
            vllm_versions=versions,
            transformers=dict(transformers),
            backend_name=self.get("name", str, backend, "backend"),
            default_target=default,
            targets=targets,
            backend_vllm_extra=self.get("vllm_extra", str, backend, "backend"),
            serve_deps=self.strings("serve_deps", backend, "backend"),
            supported_vllm=self.get("supported_vllm", str, backend, "backend"),
            lane_vllm_spec=lane_specs,
            cpu_pins=read_pins(self, lanes["cpu"], versions),
            cpu_runtime=read_runtime(self, lanes["cpu"]),
            known_failures=self.known_failures(versions, tuple(transformers), targets, backend["name"]),
            test_tools=self.strings("test_tools", top, "matrix") if "test_tools" in top else (),
            backend_test_extras=self.strings("test_extras", backend, "backend") if "test_extras" in backend else (),
            backend_cuda_test_extras=(self.strings("cuda_test_extras", backend, "backend")
                                      if "cuda_test_extras" in backend else ()),
        )

    def known_failures(self, versions: tuple[str, ...], lines: tuple[str, ...], targets: tuple[str, ...],
                       backend_name: str = "trl") -> tuple[KnownFailure, ...]:
        entries = self.raw.get("known_failures", [])
        declared = {"vllm": versions, "transformers": lines, "lane": LANES, "target": (*targets, "local")}
        allowed = set(KnownFailure.__dataclass_fields__)
        result = []
        for i, node in enumerate(entries):
            prefix = f"known_failures[{i}]"
            unknown = set(node) - allowed
            if unknown:
                raise self.fail(prefix, f"has unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
            for key in ("test", "cause", "match"):
                if not node.get(key) or not str(node[key]).strip():
                    raise self.fail(f"{prefix}.{key}", "is missing (every known failure names its tests, its cause, "
                                    "and `match`: a regular expression its failure text must contain)")
            node = dict(node)
            for key in ("test", "vllm"):
                if isinstance(node.get(key), list):
                    node[key] = self.strings(key, node, prefix)
            for key, value in node.items():
                if not isinstance(value, (str, tuple)) or (key not in ("test", "vllm") and not isinstance(value, str)):
                    raise self.fail(f"{prefix}.{key}", f"must be a string, got {value!r}")
            try:
                re.compile(node["match"])
            except re.error as exc:
                raise self.fail(f"{prefix}.match", f"is not a valid regular expression: {exc}") from None
            # A later release of the backend (trl==1.16.0) has its own cells (its declared range): its known
            # failures may name vLLM versions outside the seed matrix.
            later = _is_release_of(node.get("target", ""), backend_name) and node["target"] not in targets
            for key, values in declared.items():
                patterns = node.get(key, "*")
                for pattern in (patterns,) if isinstance(patterns, str) else patterns:
                    # An exact vLLM version above the seed matrix's: a cell of a later target's own range.
                    beyond = key == "vllm" and _is_exact_version(pattern) and Version(pattern) > max(map(Version, values))
                    if not (later and key in ("target", "vllm")) and not beyond \
                            and not any(fnmatch.fnmatchcase(v, pattern) for v in values):
                        raise self.fail(f"{prefix}.{key}", f"{pattern!r} matches no declared {key} ({', '.join(values)})")
            result.append(KnownFailure(**node))
        return tuple(result)
