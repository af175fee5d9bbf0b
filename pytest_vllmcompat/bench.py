"""Benchmark (issue #7): what the harness adds to the unavoidable cost of one cell. Not a test.

    python -m pytest_vllmcompat.bench [--cell-env .nox/vllm-0-11-1-tf4] [--out bench.json] [--repeat 2]

In one run, for one cell (its existing environment):

  floor colocate   raw `vllm.LLM` (TRL colocate's engine settings) + one 16-token greedy generate, in a subprocess of
                   the cell's python
  floor server     raw `trl vllm-serve --model M --host 127.0.0.1 --port P --max_model_len 512` (the harness's argv)
                   until /health/ answers (then stopped)
  harness          `<cell python> -m pytest tests/compat -m smoke -p no:cacheprovider`, with the server started early
                   (overlapped with the colocate engine) and, for comparison, with VLLMCOMPAT_PRESTART=0 (sequential)
  ratio            harness wall / (floor colocate + floor server)
  engines          colocate engines and servers each harness run started (its --vllm-results startup records, and
                   the server log files under its --basetemp)
  peak memory      peak summed RSS of the measured process tree (/proc polled every 0.2 s)
  env creation     `nox --install-only -s SESSION` (venv + install plan + CPU identity step, no pytest) into a fresh
                   --envdir with the uv cache warm and, with --cold, with an empty UV_CACHE_DIR; then
                   `nox -R -s SESSION -- --co -q` reusing the warm env. Scratch envdirs: the shared `.nox/` is untouched.

The load average is recorded around every measurement: other engines on the machine distort all of it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .fixtures import CPU_ENGINE_ENV as ENGINE_ENV  # the floor's engines get the env the harness gives its own

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ENV = ROOT / ".nox" / "vllm-0-11-1-tf4"
DEFAULT_SESSION = "vllm-0.11.1(tf4)"
PAGE = os.sysconf("SC_PAGE_SIZE")

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

    def _run(self):
        while not self._stop.is_set():
            children: dict[int, list[int]] = {}
            rss: dict[int, int] = {}
            for name in os.listdir("/proc"):
                if not name.isdigit():
                    continue
                try:
                    stat = Path(f"/proc/{name}/stat").read_text()
                    pages = int(Path(f"/proc/{name}/statm").read_text().split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                ppid = int(stat[stat.rfind(")") + 2:].split()[1])
                children.setdefault(ppid, []).append(int(name))
                rss[int(name)] = pages * PAGE
            tree, todo = [], [self.root]
            while todo:
                pid = todo.pop()
                if pid in rss:
                    tree.append(pid)
                todo.extend(children.get(pid, ()))
            total = sum(rss[p] for p in tree)
            if total > self.peak:
                self.peak, self.peak_procs = total, len(tree)
            self._stop.wait(self.interval)


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_group(proc: subprocess.Popen, grace: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass
    # the group may outlive its leader
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_timed(argv, *, env=None, cwd=ROOT, timeout=1800.0, log: Path | None = None) -> dict:
    """Run argv to completion in its own process group; wall time, exit code, peak tree RSS, output tail."""
    load_before = _load()
    out = open(log, "w+b") if log else tempfile.TemporaryFile()
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        with TreeMonitor(proc.pid) as mon:
            proc.wait(timeout=timeout)
    except BaseException:
        _stop_group(proc)
        raise
    finally:
        wall = time.monotonic() - started
        _stop_group(proc, grace=5.0)
    out.seek(0)
    text = out.read().decode(errors="replace")
    out.close()
    return {"wall": round(wall, 2), "rc": proc.returncode, "peak_rss_mib": round(mon.peak / 2**20),
            "peak_procs": mon.peak_procs, "load_before": load_before, "load_after": _load(),
            "tail": "\n".join(text.splitlines()[-15:]), "output": text}


def model_path(python: str) -> str:
    code = ("from pathlib import Path; from pytest_vllmcompat.models import tiny_model_path; "
            "print(tiny_model_path(Path.home() / '.cache/pytest-vllmcompat'))")
    return subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout.strip()


def floor_colocate(python: str, model: str, workdir: Path) -> dict:
    script = workdir / "floor_colocate.py"
    script.write_text(FLOOR_COLOCATE)
    r = run_timed([python, str(script), model, str(_free_port())], env={**os.environ, **ENGINE_ENV})
    for line in r["output"].splitlines():
        if line.startswith("BENCH "):
            r["phases"] = dict(kv.split("=") for kv in line.split()[1:])
    if r["rc"] != 0:
        raise SystemExit(f"floor colocate failed (exit {r['rc']}):\n{r['tail']}")
    return r


def floor_server(env_dir: Path, model: str, workdir: Path, timeout: float = 600.0) -> dict:
    import requests

    port = _free_port()
    log = workdir / f"floor-server-{port}.log"
    # The argv the harness's server fixture runs (same --max_model_len), so the ratio compares like with like.
    code = ("import importlib.util, os, sys; from pytest_vllmcompat.backend import serve_argv; "
            "from pytest_vllmcompat.fixtures import MAX_MODEL_LEN; "
            "print(*serve_argv(os.path.dirname(importlib.util.find_spec('trl').origin), sys.argv[1], "
            "port=int(sys.argv[2]), max_model_len=MAX_MODEL_LEN), sep='\\n')")
    argv = subprocess.run([str(env_dir / "bin" / "python"), "-c", code, model, str(port)], check=True,
                          capture_output=True, text=True).stdout.splitlines()
    env = {**os.environ, **ENGINE_ENV, "PATH": f"{env_dir / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    load_before = _load()
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        with TreeMonitor(proc.pid) as mon, requests.Session() as http:
            http.trust_env = False
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"floor server exited {proc.returncode} during startup; log {log}")
                try:
                    if http.get(f"http://127.0.0.1:{port}/health/", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() - started > timeout:
                    raise SystemExit(f"floor server not ready after {timeout} s; log {log}")
                time.sleep(0.25)
            ready = time.monotonic() - started
    finally:
        _stop_group(proc)
    return {"wall": round(ready, 2), "rc": 0, "peak_rss_mib": round(mon.peak / 2**20), "peak_procs": mon.peak_procs,
            "load_before": load_before, "load_after": _load(), "log": str(log)}


def harness(python: str, workdir: Path, *, prestart: bool, extra: list[str] = ()) -> dict:
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
    nox = shutil.which("nox") or "nox"
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


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pytest_vllmcompat.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cell-env", type=Path, default=DEFAULT_ENV, help=f"cell venv (default {DEFAULT_ENV})")
    ap.add_argument("--session", default=DEFAULT_SESSION, help="nox session of the cell, for env creation timing")
    ap.add_argument("--out", type=Path, help="write the JSON here")
    ap.add_argument("--repeat", type=int, default=1, help="measure everything this many times")
    ap.add_argument("--no-sequential", action="store_true", help="skip the VLLMCOMPAT_PRESTART=0 comparison run")
    ap.add_argument("--no-env", action="store_true", help="skip the nox environment creation timings")
    ap.add_argument("--cold", action="store_true", help="also time creation with an empty uv cache (downloads)")
    args = ap.parse_args(argv)
    # SIGTERM (e.g. a CI timeout) unwinds like Ctrl-C, so every `finally` stops the process group it started.
    signal.signal(signal.SIGTERM, _interrupt)

    env_dir = args.cell_env.resolve()
    python = str(env_dir / "bin" / "python")
    workdir = Path(tempfile.mkdtemp(prefix="vllmcompat-bench-"))
    model = model_path(python)
    runs = []
    for i in range(args.repeat):
        print(f"[{i + 1}/{args.repeat}] load {_load()} ...", file=sys.stderr, flush=True)
        run: dict = {"floor_colocate": floor_colocate(python, model, workdir)}
        run["floor_server"] = floor_server(env_dir, model, workdir)
        run["harness_overlap"] = harness(python, workdir, prestart=True)
        if not args.no_sequential:
            run["harness_sequential"] = harness(python, workdir, prestart=False)
        if not args.no_env:
            run["env"] = env_creation(args.session, workdir, cold=args.cold)
        for key, r in run.items():
            print(f"  {key}: " + (f"{r['wall']} s, load {r['load_before']}" if "wall" in r else "done"),
                  file=sys.stderr, flush=True)
        floor = run["floor_colocate"]["wall"] + run["floor_server"]["wall"]
        run["floor_total"] = round(floor, 2)
        for key in ("harness_overlap", "harness_sequential"):
            if key in run:
                run[key]["ratio"] = round(run[key]["wall"] / floor, 3)
        runs.append(run)
        print_table(run, i + 1)
    for run in runs:  # the JSON keeps tails, not whole outputs
        for section in [*run.values(), *run.get("env", {}).values()]:
            if isinstance(section, dict):
                section.pop("output", None)
    report = {"cell_env": str(env_dir), "model": model, "nproc": os.cpu_count(), "workdir": str(workdir),
              "runs": runs}
    if len(runs) > 1:
        report["median"] = {k: statistics.median(r[k]["wall"] for r in runs)
                            for k in ("floor_colocate", "floor_server", "harness_overlap", "harness_sequential")
                            if all(k in r for r in runs)}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
    return 0


def print_table(run: dict, n: int) -> None:
    rows = [("floor colocate (LLM + generate)", run["floor_colocate"]),
            ("floor server (vllm-serve to /health/)", run["floor_server"])]
    rows += [(f"harness smoke, {k.split('_')[1]}", run[k]) for k in ("harness_overlap", "harness_sequential")
             if k in run]
    if "env" in run:
        labels = {"cold": "nox env create, empty uv cache", "warm": "nox env create, warm uv cache",
                  "reuse": "nox -R reuse up to collection"}
        rows += [(labels[k], r) for k, r in run["env"].items()]
    print(f"\nrun {n}  (floor total {run['floor_total']} s)")
    print(f"{'measurement':40} {'wall s':>8} {'ratio':>6} {'peak RSS MiB':>13} {'engines (colo/srv)':>19}  load 1m")
    for name, r in rows:
        eng = r.get("engines")
        eng_s = f"{eng['colocate_engine']}/{eng['server']} ({eng['server_log_files']} logs)" if eng else "-"
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else "-"
        print(f"{name:40} {r['wall']:>8.1f} {ratio:>6} {r['peak_rss_mib']:>13} {eng_s:>19}  "
              f"{r['load_before'][0]}->{r['load_after'][0]}")
    if "env" in run:
        for k, e in run["env"].items():
            print(f"  nox {k}: exit {e['rc']}, installed={e['installed']}, identity step: {e['identity']}")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
