"""The ``dnnzip`` command: compress, decompress, info, demo (+ the pillars' own commands).

Every failure a user can cause ends in one line on stderr, ``dnnzip: error: …``, and a
non-zero exit; outputs are written through a temporary file, so nothing partial remains.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .codec import DnnzipError

# CLI flag → method keyword; only flags the user gave are passed to the method
METHOD_OPTIONS = {
    "bits": "bits",
    "conv_bits": "conv_bits",
    "fc_bits": "fc_bits",
    "sparsity": "sparsity",
    "quality": "quality",
    "global_sparsity": "global_sparsity",
    "step": "step",
    "qp": "qp",
    "target_ratio": "target_ratio",
    "max_error": "max_error",
    "min_snr": "min_snr_db",
    "lam": "lam",
    "dq": "dq",
    "chunk_size": "chunk_size",
    "nonweight_qp": "nonweight_qp",
}


def _add_compress(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compress", help="compress a model into a .dnnz file")
    p.add_argument("model", help="a .safetensors file, a .pt/.pth state_dict, or a HF model folder")
    p.add_argument("-o", "--output", help="output .dnnz file (default: MODEL with .dnnz)")
    p.add_argument("--method", default="deepcompression", help="compression method")
    g = p.add_argument_group("Deep Compression")
    g.add_argument("--bits", type=int, help="bits of the shared-value index for every layer")
    g.add_argument("--conv-bits", type=int, help="bits for conv layers (default 8)")
    g.add_argument("--fc-bits", type=int, help="bits for fully connected layers (default 5)")
    prune = g.add_mutually_exclusive_group()
    prune.add_argument("--sparsity", type=float, help="fraction of weights pruned per layer")
    prune.add_argument("--quality", type=float, help="prune |w| < quality × std(layer)")
    prune.add_argument("--global-sparsity", type=float, help="one threshold for all layers")
    c = p.add_argument_group("DeepCABAC (--method deepcabac)")
    target = c.add_mutually_exclusive_group()
    target.add_argument("--step", type=float, help="quantization step Δ for every tensor")
    target.add_argument("--qp", type=float, help="global QP, Δ = 2^(qp/4)")
    target.add_argument("--target-ratio", type=float, help="search Δ to reach this ratio")
    target.add_argument("--max-error", type=float, help="search Δ for this relative MSE")
    target.add_argument("--min-snr", type=float, help="search Δ for this weight SNR (dB)")
    c.add_argument("--lam", type=float, help="rate–distortion λ (0: plain rounding)")
    c.add_argument("--dq", action=argparse.BooleanOptionalAction, default=None,
                   help="dependent (trellis) quantization (default on)")  # fmt: skip
    c.add_argument("--chunk-size", type=int, help="values per independently coded chunk")
    c.add_argument("--nonweight-qp", type=float,
                   help="also code 1-D tensors (biases, norms) at this QP (default: stored as is)")
    c.add_argument("--importance", help="per-weight importance file (dnnzip.nn.save_importance)")
    p.add_argument("--keep", help="regex of tensor names to keep losslessly")
    p.add_argument("--force", action="store_true", help="overwrite the output if it exists")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no table")
    p.set_defaults(run=_run_compress)


def _run_compress(args: argparse.Namespace) -> int:
    from .pipeline import compress

    output = args.output or str(Path(args.model).with_suffix(".dnnz"))
    options: dict[str, Any] = {
        kw: getattr(args, flag)
        for flag, kw in METHOD_OPTIONS.items()
        if getattr(args, flag, None) is not None
    }
    if args.importance:
        from .nn.importance import load_importance

        options["importance"] = load_importance(args.importance)
    report = compress(
        args.model,
        output,
        method=args.method,
        keep=args.keep,
        force=args.force,
        progress=False if (args.quiet or args.json) else None,
        **options,
    )
    if args.json:
        print(json.dumps(report.as_dict(), indent=1))
    elif not args.quiet:
        print(report.table(limit=40))
        print(f"wrote {report.path}")
    return 0


def _add_decompress(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("decompress", help="restore a model from a .dnnz file")
    p.add_argument("input", help="a .dnnz file")
    p.add_argument("-o", "--output", required=True, help="output .safetensors or .pt file")
    p.add_argument("--force", action="store_true", help="overwrite the output if it exists")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_decompress)


def _run_decompress(args: argparse.Namespace) -> int:
    from .pipeline import decompress

    out = decompress(
        args.input, args.output, force=args.force, progress=False if args.quiet else None
    )
    if args.json:
        print(json.dumps({"input": args.input, "output": str(out)}))
    elif not args.quiet:
        print(f"wrote {out}")
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="per-tensor table of a .dnnz file")
    p.add_argument("input", help="a .dnnz file")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    from .container.dnnz import DnnzReader
    from .report import CompressionReport, TensorRow

    with DnnzReader(args.input) as r:
        rows = [TensorRow.from_entry(r.entry(n)) for n in r.names]
        report = CompressionReport(Path(args.input), rows, r.file_size, metadata=r.metadata)
    if args.json:
        print(json.dumps(report.as_dict(), indent=1))
    else:
        print(f"{args.input}: {json.dumps(report.metadata.get('method', {}))}")
        print(report.table())
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="compress the bundled all-MiniLM-L6-v2 and measure embedding fidelity"
    )
    p.add_argument("--bits", type=int, default=None, help="index bits (default: the demo's own)")
    p.add_argument("--sparsity", type=float, default=None, help="per-layer pruning")
    p.add_argument("--keep-file", help="also write the .dnnz file here")
    p.add_argument("--force", action="store_true", help="overwrite --keep-file")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    result = run_demo(
        bits=args.bits,
        sparsity=args.sparsity,
        keep_file=args.keep_file,
        force=args.force,
        progress=not args.json,
    )
    if args.json:
        print(json.dumps(result, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="dnnzip",
        description="Compress trained neural networks: store, compute, communicate.",
    )
    parser.add_argument("--version", action="version", version=f"dnnzip {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_compress(sub)
    _add_decompress(sub)
    _add_info(sub)
    _add_demo(sub)
    from .distributed.commands import add_commands as add_distributed_commands
    from .formats.commands import add_commands as add_format_commands

    add_format_commands(sub)  # convert, bench formats
    add_distributed_commands(sub)  # train-demo
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except DnnzipError as exc:
        print(f"dnnzip: error: {exc}", file=sys.stderr)
        return 1
    except (OSError, MemoryError) as exc:
        print(f"dnnzip: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dnnzip: interrupted (no output written)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
