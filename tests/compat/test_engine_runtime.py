"""Every process of the cell runs on the C/C++ runtime its install chose (install/engine_route.py): the host's,
or the newer runtime the cell's interpreter was pointed at (install/cpu_runtime.py). Read from /proc/<pid>/maps,
so what is checked is what each process actually loaded. The trainer child is checked in test_trainers.py."""

from __future__ import annotations

import os
from pathlib import Path

from pytest_vllmcompat.install import cpu_runtime, engine_route
from pytest_vllmcompat.install.index import harness_cache
from pytest_vllmcompat.process import procfs
from pytest_vllmcompat.testing.probe import run_probe

PROBE = ("import json, os; import torch; from pytest_vllmcompat.process import procfs; "
         "print(json.dumps({'libc': procfs.mapped_library('self', 'libc.so.'), "
         "'glibc': os.confstr('CS_GNU_LIBC_VERSION'), 'cxx': procfs.mapped_library('self', 'libstdc++')}))")


def libc(pid: int | str) -> Path | None:
    found = procfs.mapped_library(pid, "libc.so.")
    return Path(found).resolve() if found else None


def test_this_process_runs_on_the_cells_runtime(cell):
    entered = cpu_runtime.entered()
    mine = libc("self")
    assert mine is not None and mine == engine_route.cell_libc()
    if entered:
        root = Path(entered["root"]).resolve()
        assert mine.is_relative_to(root), f"the runtime {entered['runtime']} was entered, yet libc is {mine}"
        assert os.confstr("CS_GNU_LIBC_VERSION") == f"glibc {entered['glibc']}"
        assert Path(procfs.mapped_library("self", "ld-linux") or "").resolve().is_relative_to(root)
        assert cpu_runtime.TUNABLE in os.environ.get("GLIBC_TUNABLES", "").split(":")  # set by the startup hook
    else:
        assert not mine.is_relative_to(harness_cache() / "runtimes"), f"no runtime recorded, yet libc is {mine}"


def test_a_fresh_interpreter_runs_on_it(cell):
    """What probes and trainer runs are: sys.executable with torch imported (libstdc++ loaded through its RUNPATH)."""
    seen = run_probe(PROBE, timeout=120)
    assert Path(seen["libc"]).resolve() == engine_route.cell_libc()
    assert seen["glibc"] == os.confstr("CS_GNU_LIBC_VERSION")
    cxx = Path(seen["cxx"]).resolve()
    if cpu_runtime.entered():  # torch asks for libstdc++ through its RUNPATH: still the runtime's
        assert cxx.parent == engine_route.cell_libc().parent, f"libstdc++ from {cxx}"
    else:
        assert not cxx.is_relative_to(harness_cache() / "runtimes"), f"no runtime recorded, yet libstdc++ is {cxx}"


def test_every_process_of_the_server_runs_on_it(vllm_server):
    """`trl vllm-serve` (a console script), its LLM worker and vLLM's EngineCore: all the cell's runtime."""
    pids = procfs.tree(vllm_server.pid)
    seen = {pid: (procfs.cmdline(pid)[:80], libc(pid)) for pid in pids}
    assert len(seen) >= 2, f"the server has no worker process: {seen}"
    wrong = {pid: what for pid, what in seen.items() if what[1] != engine_route.cell_libc()}
    assert wrong == {}, f"processes of the server not on {engine_route.cell_libc()}: {wrong}"
