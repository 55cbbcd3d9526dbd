"""`troupe report RUN_DIR`: trend plots, health alerts and an HTML page (launch.report)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory (runs/<name>-<time>)")
    parser.add_argument("--out", type=Path, help="where to write (default RUN_DIR/report)")
    parser.add_argument("--smoothing", type=float, default=0.6,
                        help="weight of the debiased moving average, as TensorBoard's slider (default 0.6)")
    parser.add_argument("--kl-band", type=float, nargs=2, default=(0.01, 0.1), metavar=("LOW", "HIGH"),
                        help="target band of the KL to the reference (default 0.01 0.1)")
    parser.add_argument("--source", choices=("auto", "jsonl", "tb"), default="auto",
                        help="read metrics.jsonl or the TensorBoard files (default: metrics.jsonl when present)")


def run(args: argparse.Namespace) -> int:
    from launch.report import write_report
    from launch.runs import RunDataError
    from roles.evaluation.health import HealthThresholds

    low, high = args.kl_band
    if not 0 <= low < high:
        print(f"--kl-band needs 0 <= LOW < HIGH, got {low:g} {high:g}")
        return 2
    if not 0 <= args.smoothing < 1:
        print(f"--smoothing must be in [0, 1), got {args.smoothing:g}")
        return 2
    try:
        report = write_report(args.run_dir, args.out, args.smoothing, args.source, HealthThresholds(kl_band=(low, high)))
    except (RunDataError, ValueError) as error:
        print(f"troupe report: {error}")
        return 1
    print(f"{len(report.plots)} plots and {report.html}")
    if not report.alerts:
        print("no health alerts")
    for alert in report.alerts:
        print(alert.line())
    return 0
