"""`troupe compare RUN_DIR... [--format md|csv|html]`: the A/B table across runs (launch.compare)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="two or more run directories")
    parser.add_argument("--format", choices=("md", "csv", "html"), default="md", help="table format (default md)")
    parser.add_argument("--source", choices=("auto", "jsonl", "tb"), default="auto",
                        help="read metrics.jsonl or the TensorBoard files (default: metrics.jsonl when present)")
    parser.add_argument("--out", type=Path, help="write the table to this file instead of printing it")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples of the paired test (default 2000)")


def run(args: argparse.Namespace) -> int:
    from launch.compare import compare_runs, render
    from launch.runs import RunDataError, load_run

    if len(args.run_dirs) < 2:
        print("troupe compare: give at least two run directories")
        return 2
    try:
        comparison = compare_runs([load_run(path, args.source) for path in args.run_dirs], args.resamples)
    except RunDataError as error:
        print(f"troupe compare: {error}")
        return 1
    text = render(comparison, args.format)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0
