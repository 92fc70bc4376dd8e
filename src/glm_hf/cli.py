"""The `glm-hf` console script: a thin argument parser over the library's jobs."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path


def _demo(args: argparse.Namespace) -> None:
    from .demo import print_report, run_demo

    print_report(run_demo(output=args.output, seed=args.seed, max_new_tokens=args.max_new_tokens))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glm-hf", description="The original GLM in transformers.")
    jobs = parser.add_subparsers(dest="job", required=True)

    demo = jobs.add_parser("demo", help="build a tiny GLM, save, reload through the Auto classes and fill a blank")
    demo.add_argument("--output", type=Path, default=None, help="new or empty folder to keep the model in")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--max-new-tokens", type=int, default=8)
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (FileExistsError, FileNotFoundError, ValueError) as error:
        raise SystemExit(f"glm-hf {args.job}: error: {error}") from None


if __name__ == "__main__":
    main()
