"""torch inductor's CPU vector-ISA check, done once per host and torch instead of once per process.

Every process that compiles CPU code with inductor (each engine: the colocate engine here, each server's engine
core, each trainer child) first checks which vector ISAs (AVX2, AVX-512, AMX) work: for each one the CPU's flags
name, it builds a tiny library (cached on disk) and then loads it in a fresh `python -c "import torch; ..."`
(torch/_inductor/cpu_vec_isa.py, VecISA.check_build), every time. Measured on vllm-0.11.1(tf4) on 2 cores: six such
children per cell, 3-4 CPU seconds each, 4-10 s of wall each inside an engine's start-up.

`TORCHINDUCTOR_VEC_ISA_OK=1` is torch's own switch to trust the CPU's flags instead. It is set only where that
gives exactly what the check gives: this module runs torch's check once (the same functions, in a fresh
interpreter of this environment), and the flags-only answer, and keeps both in a fact file under the harness's
compile-cache folder, keyed by the torch installed, the CPU's flags and the C++ compilers on PATH. Equal lists:
the variable is set to 1 (an empty checked list: 0); different: it is left unset and each process checks as
before. Best effort: if the check cannot run, nothing is set and nothing is written. A value you have set wins.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

VEC_ISA_ENV = "TORCHINDUCTOR_VEC_ISA_OK"
CPUINFO = Path("/proc/cpuinfo")
CHECK = """
import json
from torch._inductor import config, cpu_vec_isa
checked = [str(isa) for isa in cpu_vec_isa.valid_vec_isa_list()]
cpu_vec_isa.valid_vec_isa_list.cache_clear()
config.cpp.vec_isa_ok = True
print(json.dumps({"checked": checked, "by_flags": [str(isa) for isa in cpu_vec_isa.valid_vec_isa_list()]}))
"""


def host_key() -> str | None:
    """What the check's answer depends on: the torch installed, the CPU's flags, the C++ compilers on PATH."""
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return None
    try:
        flags = next((line for line in CPUINFO.read_text().splitlines() if line.startswith("flags")),
                     "")
    except OSError:
        flags = ""
    compilers = {}
    for name in filter(None, (os.environ.get("CXX"), "g++", "c++", "clang++")):
        found = shutil.which(name)
        if found:
            real = os.path.realpath(found)
            compilers[name] = [real, os.stat(real).st_mtime_ns]
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:  # an importable torch without metadata: no key, no check
        return None
    parts = {"torch": version, "at": spec.origin, "flags": flags, "cxx": compilers}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def is_fact(value: object) -> bool:
    """What the check prints and the fact file holds: {"checked": [...], "by_flags": [...]} (a damaged file is not)."""
    return (isinstance(value, dict) and isinstance(value.get("checked"), list)
            and isinstance(value.get("by_flags"), list))


def checked_fact(folder: Path) -> dict | None:
    """{"checked": [...], "by_flags": [...]} for this host: from its fact file, else measured now and written."""
    key = host_key()
    if key is None:
        return None
    path = folder / f"vec-isa-{key}.json"
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        kept = None
    if is_fact(kept):
        return kept
    try:
        done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL)
        fact = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        fact = None
    if not is_fact(fact):
        return None
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps(fact))
    partial.replace(path)  # atomic: a concurrent worker reads the old file or this one
    return fact


def vec_isa_env(cache_dir: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """The variable to add to `environ` ({} when it is set already, or when trusting the flags would differ).
    The fact file lives in cache_dir/compile/host/, beside the compile caches a CI cache step keeps."""
    if environ.get(VEC_ISA_ENV):
        return {}
    fact = checked_fact(cache_dir / "compile" / "host")
    if fact is None or fact["checked"] != fact["by_flags"]:
        return {}
    return {VEC_ISA_ENV: "1" if fact["checked"] else "0"}
