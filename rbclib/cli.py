"""The ``rbc`` command: ``run``, ``simulate``, ``reconstruct``, ``assess``.

Each subcommand is a thin wrapper over a library function; ``rbc CMD --help`` documents it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_run(args: argparse.Namespace) -> int:
    from rbclib.pipeline import NotebookFailed, run_notebooks

    only = [s for part in args.only for s in part.split(",") if s] if args.only else None
    run_dir = args.run_dir or Path("runs") / args.profile
    try:
        run_notebooks(profile=args.profile, run_dir=run_dir, seed=args.seed, only=only,
                      start_from=args.start_from, notebooks_dir=args.notebooks)
    except NotebookFailed as exc:
        print(f"rbc run: {exc}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rbc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the numbered notebooks headless with papermill")
    p.add_argument("--profile", default="quick", choices=["smoke", "quick", "paper"])
    p.add_argument("--only", action="append", help="notebook numbers, e.g. 01,03")
    p.add_argument("--from", dest="start_from", help="start at this notebook number, e.g. 03")
    p.add_argument("--run-dir", type=Path, help="run folder (default runs/<profile>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--notebooks", type=Path, help="folder of notebooks (default: the repository's)")
    p.set_defaults(func=_cmd_run)

    # Further subcommands (simulate, reconstruct, assess) are added above this line,
    # each as a parser block plus a `_cmd_<name>` handler that calls the library.
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"rbc {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
