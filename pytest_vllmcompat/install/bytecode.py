"""Compile the cell environment's Python sources to bytecode once, at install (an install step of every cell).

Why: uv installs without `.pyc` files (pip writes them at install; uv only with --compile-bytecode), and where
PYTHONDONTWRITEBYTECODE is set (as on these runners) no interpreter ever caches them. Then every fresh interpreter
of a cell (each `trl vllm-serve` process, each EngineCore, each probe and trainer child) recompiles torch, vLLM,
transformers and TRL from source. Measured on vllm-0.11.1(tf4): `import torch, vllm, trl; from trl import
GRPOTrainer` took 47-74 s without bytecode and 26-37 s with it; compiling the 19,020 files took 39 s once.
Bytecode changes nothing a test observes (same sources, same behaviour): it is what a pip-installed user has.
"""

from __future__ import annotations

import compileall
import sysconfig
import time


def compile_environment() -> str:
    """Compile this interpreter's site-packages (purelib and platlib); a line saying what was done."""
    started = time.monotonic()
    dirs = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    ok = all(compileall.compile_dir(d, quiet=1, workers=0) for d in dirs)
    # quiet=1 prints only errors: a source that does not compile (a test fixture shipped in a wheel) is
    # reported by compileall and left to be compiled (and fail) at import, as without this step.
    return (f"vllmcompat bytecode: {', '.join(dirs)} compiled in {time.monotonic() - started:.0f} s"
            + ("" if ok else " (some files did not compile; see above)"))
