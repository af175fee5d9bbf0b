"""The benchmark's measurements: the floor (raw engine, raw server), harness runs, environment creation."""


from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..backend.settings import (
    CPU_ENGINE_ENV as ENGINE_ENV,  # the floor's engines get the env the harness gives its own
)
from ..process import procfs
from ..process.compile_cache import CACHE_DIR_ENV, COMPILE_CACHE_VARS, DEFAULT_CACHE_DIR, compile_cache_env
from ..process.executor import ServerProcess, stop_group
from ..process.ports import late_bind_port
from ..process.vec_isa import vec_isa_env

ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_ENV = ROOT / ".nox" / "vllm-0-11-1-tf4"
DEFAULT_SESSION = "vllm-0.11.1(tf4)"


def nox_command() -> str:
    """The nox that runs the cells: the one installed beside this interpreter (the project's venv), else the one
    on PATH; a clear exit, before anything is measured, where there is none."""
    beside = Path(sys.executable).with_name("nox")
    found = str(beside) if beside.is_file() else shutil.which("nox")
    if found is None:
        raise SystemExit(f"nox is neither beside {sys.executable} nor on PATH: install it in the environment "
                         "that runs the benchmark (pip install -e '.[dev]')")
    return found

# The engine TRL's colocate mode builds (trl/generation/vllm_generation.py, VLLMGeneration defaults, 1 process),
# with the harness's max_model_length. No TRL import: this is the floor.
FLOOR_COLOCATE = r'''
import os, sys, time
t0 = time.monotonic()
os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
from vllm import LLM, SamplingParams
if __name__ == "__main__":
    t1 = time.monotonic()
    llm = LLM(model=sys.argv[1], tensor_parallel_size=1, gpu_memory_utilization=0.9, max_model_len=512,
              max_num_seqs=None, enable_sleep_mode=False, model_impl="auto",
              distributed_executor_backend="external_launcher", seed=0, max_num_batched_tokens=4096,
              logprobs_mode="processed_logprobs", quantization=None)
    t2 = time.monotonic()
    out = llm.generate(["The quick brown fox"], SamplingParams(temperature=0.0, max_tokens=16))
    t3 = time.monotonic()
    assert len(out[0].outputs[0].token_ids) > 0
    print(f"BENCH import={t1 - t0:.2f} build={t2 - t1:.2f} generate={t3 - t2:.3f}", flush=True)
    os._exit(0)  # like a finished script; skips interpreter teardown of the engine
'''


class TreeMonitor:
    """Peak summed RSS (bytes) of a process and all its descendants, polled from /proc."""

    def __init__(self, root_pid: int, interval: float = 0.2):
        self.root, self.interval, self.peak, self.peak_procs = root_pid, interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            tree = procfs.tree(self.root)
            total = sum(procfs.rss_bytes(p) or 0 for p in tree)
            if total > self.peak:
                self.peak, self.peak_procs = total, len(tree)
            self._stop.wait(self.interval)


def compile_caches(workdir: Path, *, cold: bool) -> dict[str, str]:
    """The compile-cache variables of one measurement: the harness's own folders (what a cell's pytest sets,
    process/compile_cache.py), or with cold=True a new empty folder (a fresh CI runner's start)."""
    if cold:
        fresh = Path(tempfile.mkdtemp(prefix="compile-cold-", dir=workdir))
        return {var: str(fresh / sub) for var, sub in COMPILE_CACHE_VARS.items()}
    cache_dir = Path(os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR)
    # and inductor's ISA check answered once, as a cell's pytest does for its engines (process/vec_isa.py)
    return {**compile_cache_env(cache_dir, os.environ), **vec_isa_env(cache_dir, os.environ)}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_timed(argv, *, env=None, cwd=ROOT, timeout=1800.0, log: Path | None = None) -> dict:
    """Run argv to completion in its own process group; wall time, exit code, peak tree RSS, output tail."""
    load_before = load_average()
    out = open(log, "w+b") if log else tempfile.TemporaryFile()
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        with TreeMonitor(proc.pid) as mon:
            proc.wait(timeout=timeout)
    except BaseException:
        stop_group(proc, grace=15.0)
        raise
    finally:
        wall = time.monotonic() - started
        stop_group(proc, grace=5.0)
    out.seek(0)
    text = out.read().decode(errors="replace")
    out.close()
    return {"wall": round(wall, 2), "rc": proc.returncode, "peak_rss_mib": round(mon.peak / 2**20),
            "peak_procs": mon.peak_procs, "load_before": load_before, "load_after": load_average(),
            "tail": "\n".join(text.splitlines()[-15:]), "output": text}


def model_path(python: str) -> str:
    code = ("from pathlib import Path; from pytest_vllmcompat.testing.models import tiny_model_path; "
            "print(tiny_model_path(Path.home() / '.cache/pytest-vllmcompat'))")
    return subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout.strip()


def floor_colocate(python: str, model: str, workdir: Path, caches: dict[str, str]) -> dict:
    script = workdir / "floor_colocate.py"
    script.write_text(FLOOR_COLOCATE)
    r = run_timed([python, str(script), model, str(late_bind_port())], env={**os.environ, **ENGINE_ENV, **caches})
    for line in r["output"].splitlines():
        if line.startswith("BENCH "):
            r["phases"] = dict(kv.split("=") for kv in line.split()[1:])
    if r["rc"] != 0:
        raise SystemExit(f"floor colocate failed (exit {r['rc']}):\n{r['tail']}")
    return r


def floor_server(env_dir: Path, model: str, workdir: Path, caches: dict[str, str], timeout: float = 600.0) -> dict:
    """A raw `trl vllm-serve` with the harness's argv, until /health/ answers (the executor's own health poll)."""
    port = late_bind_port()
    # The argv the harness's server fixture runs (same --max_model_len), so the ratio compares like with like.
    code = ("import sys; from pytest_vllmcompat.backend.serve import installed_trl_location, serve_argv; "
            "from pytest_vllmcompat.backend.settings import MAX_MODEL_LEN; "
            "print(*serve_argv(installed_trl_location(), sys.argv[1], port=int(sys.argv[2]), "
            "max_model_len=MAX_MODEL_LEN), sep='\\n')")
    argv = subprocess.run([str(env_dir / "bin" / "python"), "-c", code, model, str(port)], check=True,
                          capture_output=True, text=True).stdout.splitlines()
    env = {**ENGINE_ENV, **caches, "PATH": f"{env_dir / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    server = ServerProcess("floor trl vllm-serve", argv, port=port, health_url=f"http://127.0.0.1:{port}/health/",
                           log_path=workdir / f"floor-server-{port}.log", env=env, startup_timeout=timeout)
    load_before = load_average()
    server.start()
    assert server.pid is not None
    try:
        with TreeMonitor(server.pid) as mon:
            server.wait_ready()  # raises ServerStartupError (exit code, log tail) on death or timeout
    finally:
        server.stop(grace=15.0)
    return {"wall": round(server.startup_seconds or 0.0, 2), "rc": 0, "peak_rss_mib": round(mon.peak / 2**20),
            "peak_procs": mon.peak_procs, "load_before": load_before, "load_after": load_average(),
            "log": str(server.log_path)}


def harness(python: str, workdir: Path, *, prestart: bool, extra: tuple[str, ...] = ()) -> dict:
    tag = f"harness-{'overlap' if prestart else 'sequential'}-{time.monotonic_ns()}"
    results, basetemp = workdir / f"{tag}-results", workdir / f"{tag}-bt"
    argv = [python, "-m", "pytest", "tests/compat", "-m", "smoke", "-p", "no:cacheprovider",
            "--vllm-results", str(results), "--basetemp", str(basetemp), *extra]
    env = {**os.environ, "VLLMCOMPAT_PRESTART": "1" if prestart else "0"}
    r = run_timed(argv, env=env, log=workdir / f"{tag}.log")
    startup: dict = {}
    for f in sorted(results.glob("*.json")):
        startup = json.loads(f.read_text()).get("startup", {})
    r["engines"] = {"colocate_engine": len(startup.get("colocate_engine", [])),
                    "server": len(startup.get("server", [])),
                    "server_log_files": len([f for f in basetemp.glob("servers*/*.log")
                                                if not f.parent.is_symlink()])}  # not pytest's *current links
    r["startup_s"] = startup
    r["summary"] = next((ln for ln in reversed(r["output"].splitlines()) if " in " in ln and "=" in ln), "")
    if r["rc"] != 0:
        print(f"warning: harness run exited {r['rc']}:\n{r['tail']}", file=sys.stderr)
    return r


def env_creation(session: str, workdir: Path, *, cold: bool) -> dict:
    """Environment creation alone (`nox --install-only`: venv, install plan, CPU identity step) into a scratch
    --envdir, warm (the user's uv cache) and, with cold=True, with an empty uv cache (everything downloaded);
    then `nox -R` reuse of the warm env up to pytest's collection."""
    nox = nox_command()
    tail = ["-s", session, "--", "--co", "-q", "--vllm-results", str(workdir / "nox-res")]
    out: dict = {}
    for name in (["cold"] if cold else []) + ["warm"]:
        envdir = workdir / f"nox-envs-{name}"
        shutil.rmtree(envdir, ignore_errors=True)
        env = {**os.environ, **({"UV_CACHE_DIR": str(workdir / "uv-cache-cold")} if name == "cold" else {})}
        out[name] = run_timed([nox, "--install-only", "--envdir", str(envdir), *tail], env=env,
                              log=workdir / f"nox-{name}.log")
    out["reuse"] = run_timed([nox, "-R", "--envdir", str(workdir / "nox-envs-warm"), *tail],
                             log=workdir / "nox-reuse.log")
    for r in out.values():
        lines = r["output"].splitlines()
        r["identity"] = [ln.strip() for ln in lines if "cpu-identity" in ln][:1]
        r["installed"] = any("uv pip install" in ln for ln in lines)
    for name in ("cold", "warm"):
        shutil.rmtree(workdir / f"nox-envs-{name}", ignore_errors=True)
    shutil.rmtree(workdir / "uv-cache-cold", ignore_errors=True)
    return out


