"""``dnnzip train-demo``: real multi-process SBC/STC training on scikit-learn's digits.

Wired into the CLI with ``add_commands(subparsers)``; the handler prints accuracy, bits and
the compression ratio against dense all-reduce (which it also trains, unless ``--no-baseline``)
and can write a JSON report and a PNG of accuracy against bits sent.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..codec import DnnzipError
from .core import METHODS

__all__ = ["add_commands", "train_demo"]


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train-demo`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "train-demo",
        help="train an MLP on digits with N worker processes and compressed communication",
        description="Launch real worker processes (gloo, 127.0.0.1), train a 1.1 M-parameter "
        "MLP on scikit-learn's digits with SBC/STC/top-k communication, and compare with "
        "dense all-reduce.",
    )
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--method", choices=METHODS, default="sbc")
    p.add_argument("--p", type=float, default=0.01, help="density: fraction of entries sent")
    p.add_argument("--delay", type=int, default=1, help="communication delay n (local steps)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wire", choices=("golomb", "padded"), default="golomb")
    p.add_argument("--hidden", type=int, nargs="+", default=[1024, 1024])
    p.add_argument("--timeout", type=float, default=60.0, help="collective timeout, seconds")
    p.add_argument("--no-baseline", action="store_true", help="skip the dense run")
    p.add_argument("--json", dest="json_out", metavar="FILE", help="write the report as JSON")
    p.add_argument("--plot", metavar="PNG", help="plot accuracy against bits sent")
    p.set_defaults(run=train_demo, func=train_demo)


def _config(args: argparse.Namespace, method: str, p: float, delay: int):
    from .demo import TrainConfig

    return TrainConfig(method=method, p=p, delay=delay, workers=args.workers, steps=args.steps,
                       batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                       hidden=tuple(args.hidden), seed=args.seed, wire=args.wire,
                       timeout=args.timeout, eval_every=max(1, args.steps // 20))


def train_demo(args: argparse.Namespace) -> int:
    """Run the demo; returns the exit code (1 with one error line on failure)."""
    from .demo import run_training

    try:
        runs: dict[str, Any] = {}
        runs["compressed"] = run_training(_config(args, args.method, args.p, args.delay))
        if not args.no_baseline:
            runs["dense"] = run_training(_config(args, "dense", 1.0, 1))
    except (DnnzipError, ValueError) as exc:
        print(f"dnnzip train-demo: error: {exc}", file=sys.stderr)
        return 1
    label = f"{args.method} p={args.p} n={args.delay}"
    print(f"{'run':<24}{'accuracy %':>12}{'upstream MB':>14}{'x dense':>10}{'replica diff':>14}")
    for name, r in runs.items():
        led = r["ledger"]
        print(f"{(label if name == 'compressed' else 'dense all-reduce'):<24}"
              f"{r['accuracy']:>12.2f}{led['sent_bytes'] / 1e6:>14.4f}"
              f"{led['ratio_sent']:>10.1f}{r['max_replica_diff']:>14.3g}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(runs, f, indent=1)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for name, r in runs.items():
            curve = r["curve"]
            ax.plot([c["bytes"] * 8 for c in curve], [c["accuracy"] for c in curve],
                    marker=".", label=label if name == "compressed" else "dense all-reduce")
        ax.set_xscale("log")
        ax.set_xlabel("upstream bits sent per worker")
        ax.set_ylabel("test accuracy (%)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
    return 0
