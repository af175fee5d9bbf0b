"""Typed access to the raw TOML of a matrix file, with errors that name the file and the dotted key."""

from __future__ import annotations

from pathlib import Path

from ..errors import MatrixError


class Reader:
    def __init__(self, path: Path, raw: dict):
        self.path, self.raw = path, raw

    def fail(self, key: str, problem: str) -> MatrixError:
        return MatrixError(f"{self.path}: [{key}] {problem}")

    def get(self, key: str, kind: type, node: dict | None = None, prefix: str = ""):
        node = self.raw if node is None else node
        full = f"{prefix}.{key}" if prefix else key
        if key not in node:
            raise self.fail(full, "is missing")
        value = node[key]
        if not isinstance(value, kind):
            raise self.fail(full, f"must be a {kind.__name__}, got {type(value).__name__}: {value!r}")
        return value

    def strings(self, key: str, node: dict, prefix: str) -> tuple[str, ...]:
        values = self.get(key, list, node, prefix)
        for i, v in enumerate(values):
            if not isinstance(v, str) or not v:
                raise self.fail(f"{prefix}.{key}[{i}]", f"must be a non-empty string, got {v!r}")
        return tuple(values)
