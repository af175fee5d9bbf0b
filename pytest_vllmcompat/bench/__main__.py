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
  whole cell       (--whole-cell, instead of the smoke runs and env timings) `nox -R -s SESSION` with the env
                   present: wall, ratio to the floor, peak memory, start-ups, and its wall time by phase
                   (bench/cell.py: probes, trainer runs, float32 server, ..., before pytest, collection + rest)
  env creation     `nox --install-only -s SESSION` (venv + install plan + CPU identity step, no pytest) into a fresh
                   --envdir with the uv cache warm and, with --cold, with an empty UV_CACHE_DIR; then
                   `nox -R -s SESSION -- --co -q` reusing the warm env. Scratch envdirs: the shared `.nox/` is untouched.

Compile caches: every measurement uses the harness's vLLM and inductor compile caches (process/compile_cache.py), so
the floor and the cell start alike; --cold-compile-caches gives each measurement new empty ones instead.

The load average is recorded around every measurement: other engines on the machine distort all of it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

from .cell import whole_cell
from .measure import (
    DEFAULT_ENV,
    DEFAULT_SESSION,
    compile_caches,
    env_creation,
    floor_colocate,
    floor_server,
    harness,
    load_average,
    model_path,
    nox_command,
)


def _interrupt(signum: int, frame: FrameType | None) -> None:
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
    ap.add_argument("--cold-compile-caches", action="store_true", help="start every measurement with empty vLLM "
                    "and inductor compile caches (default: the harness's, under its cache folder)")
    ap.add_argument("--whole-cell", action="store_true", help="time the whole cell (nox -R -s SESSION) by phase "
                    "instead of the smoke runs and env timings")
    args = ap.parse_args(argv)
    if args.whole_cell or not args.no_env:
        nox_command()  # refuse now, not after the floor's engines were measured
    # SIGTERM (e.g. a CI timeout) unwinds like Ctrl-C, so every `finally` stops the process group it started.
    signal.signal(signal.SIGTERM, _interrupt)

    env_dir = args.cell_env.resolve()
    python = str(env_dir / "bin" / "python")
    workdir = Path(tempfile.mkdtemp(prefix="vllmcompat-bench-"))
    model = model_path(python)
    runs = []
    for i in range(args.repeat):
        print(f"[{i + 1}/{args.repeat}] load {load_average()} ...", file=sys.stderr, flush=True)
        cold = args.cold_compile_caches
        run: dict = {"compile_caches": "cold" if cold else "warm",
                     "floor_colocate": floor_colocate(python, model, workdir, compile_caches(workdir, cold=cold))}
        run["floor_server"] = floor_server(env_dir, model, workdir, compile_caches(workdir, cold=cold))
        if args.whole_cell:
            run["cell"] = whole_cell(args.session, workdir, compile_caches(workdir, cold=cold))
        else:
            run["harness_overlap"] = harness(python, workdir, prestart=True)
            if not args.no_sequential:
                run["harness_sequential"] = harness(python, workdir, prestart=False)
            if not args.no_env:
                run["env"] = env_creation(args.session, workdir, cold=args.cold)
        for key, r in ((k, v) for k, v in run.items() if isinstance(v, dict)):
            print(f"  {key}: " + (f"{r['wall']} s, load {r['load_before']}" if "wall" in r else "done"),
                  file=sys.stderr, flush=True)
        floor = run["floor_colocate"]["wall"] + run["floor_server"]["wall"]
        run["floor_total"] = round(floor, 2)
        for key in ("harness_overlap", "harness_sequential", "cell"):
            if key in run:
                run[key]["ratio"] = round(run[key]["wall"] / floor, 3)
        runs.append(run)
        print_table(run, i + 1)
    for run in runs:  # the JSON keeps tails, not whole outputs
        for section in [*run.values(), *run.get("env", {}).values()]:
            if isinstance(section, dict):
                section.pop("output", None)
    report: dict[str, Any] = {"cell_env": str(env_dir), "model": model, "nproc": os.cpu_count(), "workdir": str(workdir),
              "runs": runs}
    if len(runs) > 1:
        report["median"] = {k: statistics.median(r[k]["wall"] for r in runs)
                            for k in ("floor_colocate", "floor_server", "harness_overlap", "harness_sequential", "cell")
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
    if "cell" in run:
        rows.append(("whole cell (nox -R)", run["cell"]))
    if "env" in run:
        labels = {"cold": "nox env create, empty uv cache", "warm": "nox env create, warm uv cache",
                  "reuse": "nox -R reuse up to collection"}
        rows += [(labels[k], r) for k, r in run["env"].items()]
    print(f"\nrun {n}  (floor total {run['floor_total']} s, compile caches {run['compile_caches']})")
    print(f"{'measurement':40} {'wall s':>8} {'ratio':>6} {'peak RSS MiB':>13} {'engines (colo/srv)':>19}  load 1m")
    for name, r in rows:
        eng = r.get("engines")
        eng_s = f"{eng['colocate_engine']}/{eng['server']} ({eng['server_log_files']} logs)" if eng else "-"
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else "-"
        print(f"{name:40} {r['wall']:>8.1f} {ratio:>6} {r['peak_rss_mib']:>13} {eng_s:>19}  "
              f"{r['load_before'][0]}->{r['load_after'][0]}")
    if "cell" in run:
        cell = run["cell"]
        print(f"  whole cell: exit {cell['rc']}, {cell['counts']}, start-ups {cell['startup']}")
        for phase, seconds in sorted(cell["phases"].items(), key=lambda kv: -kv[1]):
            print(f"    {phase:50} {seconds:>7.1f} s  {100 * seconds / cell['wall']:>4.0f}%")
        for work, seconds in cell.get("background", {}).items():
            print(f"    beside the tests, not added: {work} {seconds:.1f} s")
    if "env" in run:
        for k, e in run["env"].items():
            print(f"  nox {k}: exit {e['rc']}, installed={e['installed']}, identity step: {e['identity']}")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
