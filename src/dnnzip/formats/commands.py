"""CLI of the compute pillar: ``dnnzip convert`` and ``dnnzip bench formats``.

``convert IN.dnnz --format cser -o OUT.pt`` turns every quantized matrix of a container into a
CER/CSER/CSR matrix (built from the stored levels + codebook, never through dense floats) and
keeps the other tensors; ``load_converted`` reads the result back.
``bench formats MODEL`` times dense BLAS, scipy CSR, our CSR and CSER on the model's matrices.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..codec import DnnzipError, InvalidOption, Quantized
from . import CSR, FORMATS, MatrixFormat, Triplets
from .dense import Dense

CONVERT_FORMATS = ("cser", "cer", "csr", "auto")
SAVE_VERSION = 1


# ----------------------------------------------------------------------------- convert


def _matrix_of(q: Quantized, shape: tuple[int, ...]) -> Quantized:
    """Rows = first dimension (output neuron/channel), columns = the rest."""
    return Quantized(np.asarray(q.indices).reshape(shape[0], -1), np.asarray(q.codebook))


def convert_container(path: str | Path, fmt: str = "cser", *, max_distinct: int = 256,
                      batch: int = 1, min_dims: int = 2) -> tuple[dict[str, Any], list[dict]]:
    """Read a .dnnz file; return (saveable dict, per-tensor rows of the report)."""
    import torch

    import dnnzip

    if fmt not in CONVERT_FORMATS:
        raise InvalidOption(f"unknown format {fmt!r} (choose from {', '.join(CONVERT_FORMATS)})")
    matrices: dict[str, Any] = {}
    tensors: dict[str, Any] = {}
    rows: list[dict] = []
    with dnnzip.open(path) as reader:
        for name in reader.names:
            shape = tuple(reader.entry(name)["shape"])
            q = None
            if len(shape) >= min_dims and min(shape) > 0:
                try:
                    q = reader.read_quantized(name)
                except NotImplementedError:
                    q = None  # stored losslessly: not a quantized matrix
            if q is None or np.asarray(q.codebook).shape[0] > max_distinct:
                tensors[name] = reader.read_torch(name)
                rows.append({"name": name, "shape": list(shape), "format": "kept"})
                continue
            t = Triplets.from_quantized(_matrix_of(q, shape))
            chosen, built = fmt, {}
            if fmt == "auto":
                from ..nn.convert import _pick

                chosen, _, _, built = _pick(t, batch)
            if chosen == "dense":
                m = Dense.from_triplets(t)
            else:  # the matrix timed for the choice, when there was one
                m = built[chosen] if chosen in built else FORMATS[chosen].from_triplets(t)
            state = m.to_state()
            matrices[name] = {
                "tensor_shape": list(shape),
                **{k: (torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray)
                       else v) for k, v in state.items()},
            }
            dense_bytes = int(np.prod(shape)) * 4
            rows.append({
                "name": name, "shape": list(shape), "format": chosen, "nnz": m.nnz,
                "bytes": m.nbytes, "dense_bytes": dense_bytes,
                "ratio": dense_bytes / max(m.nbytes, 1), "entropy_bits": m.entropy,
                "distinct": int(m.value_counts()[0].shape[0]),
            })
    return {"dnnzip_formats": SAVE_VERSION, "source": str(path), "matrices": matrices,
            "tensors": tensors}, rows


def load_converted(path: str | Path) -> tuple[dict[str, MatrixFormat], dict[str, Any]]:
    """Read a file written by ``dnnzip convert``: (matrices by name, other tensors by name)."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise DnnzipError(f"{path}: not a converted model ({exc.__class__.__name__})") from None
    if not isinstance(obj, dict) or obj.get("dnnzip_formats") != SAVE_VERSION:
        raise DnnzipError(f"{path}: not a file written by 'dnnzip convert'")
    matrices = {}
    for name, st in obj["matrices"].items():
        state = {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in st.items()}
        matrices[name] = MatrixFormat.from_state(state)
    return matrices, obj["tensors"]


def run_convert(args: argparse.Namespace) -> int:
    import torch

    from ..container import AtomicFile

    src = Path(args.input)
    if not src.exists():
        raise DnnzipError(f"{src}: no such file")
    output = args.output or str(src.with_suffix(f".{args.format}.pt"))
    saved, rows = convert_container(src, args.format, max_distinct=args.max_distinct,
                                    batch=args.batch)
    with AtomicFile(output, force=args.force) as f:
        torch.save(saved, f.file)
    total_dense = sum(r.get("dense_bytes", 0) for r in rows)
    total = sum(r.get("bytes", 0) for r in rows)
    if args.json:
        print(json.dumps({"output": output, "tensors": rows, "matrix_bytes": total,
                          "dense_float32_bytes": total_dense}, indent=1))
    else:
        print(f"{'tensor':48s} {'shape':>16s} {'format':>6s} {'nnz':>9s} {'bytes':>10s} "
              f"{'vs f32':>7s} {'H bits':>6s}")
        for r in rows:
            if r["format"] == "kept":
                print(f"{r['name'][:48]:48s} {str(tuple(r['shape'])):>16s} {'kept':>6s}")
                continue
            print(f"{r['name'][:48]:48s} {str(tuple(r['shape'])):>16s} {r['format']:>6s} "
                  f"{r['nnz']:9d} {r['bytes']:10d} {r['ratio']:6.1f}x {r['entropy_bits']:6.2f}")
        if total:
            print(f"matrices: {total} bytes vs {total_dense} dense float32 "
                  f"({total_dense / total:.1f}x); written {output}")
        else:
            print(f"no quantized matrices in {src}; written {output}")
    return 0


# ----------------------------------------------------------------------------- bench formats


def prune_and_quantize(w: np.ndarray, sparsity: float, bits: int) -> np.ndarray:
    """Magnitude pruning to ``sparsity`` then a uniform ``bits`` grid whose step is set by the
    99.9th percentile of the kept magnitudes (so single outliers do not flatten the grid)."""
    from ..prune.magnitude import prune, threshold_for_sparsity

    w = prune(w, threshold_for_sparsity(w, sparsity)) if sparsity > 0 else w.astype(np.float32)
    kept = np.abs(w[w != 0])
    if kept.size == 0:
        return w
    top = (1 << (bits - 1)) - 1
    step = float(np.quantile(kept, 0.999)) / top or 1.0
    return (np.clip(np.rint(w / step), -top, top) * step).astype(np.float32)


def _median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bench_matrices(source: str | Path, *, sparsity: float = 0.9, bits: int = 4,
                   batches: tuple[int, ...] = (1, 8, 64), threads: int = 1, repeats: int = 20,
                   include: str | None = None, limit: int | None = None) -> list[dict]:
    """Time dense/scipy-CSR/CSR/CSER products on every 2-D+ weight of a model or .dnnz file."""
    import scipy.sparse as sp

    if not 2 <= bits <= 16:
        raise InvalidOption(f"bits must be in 2..16, got {bits}")
    if not 0 <= sparsity < 1:
        raise InvalidOption(f"sparsity must be in [0, 1), got {sparsity}")
    pattern = re.compile(include) if include else None
    matrices: list[tuple[str, np.ndarray]] = []
    path = Path(source)
    if path.suffix == ".dnnz":
        import dnnzip

        with dnnzip.open(path) as reader:
            for name in reader.names:
                shape = tuple(reader.entry(name)["shape"])
                if len(shape) < 2 or (pattern and not pattern.search(name)):
                    continue
                try:
                    q = reader.read_quantized(name)
                except NotImplementedError:
                    continue
                matrices.append((name, _matrix_of(q, shape).dequantize()))
    else:
        from ..io.readers import open_model

        src = open_model(source)
        try:
            for name in src.names:
                if len(src.shape(name)) < 2 or (pattern and not pattern.search(name)):
                    continue
                w = src.get(name).detach().float().numpy()
                w = prune_and_quantize(w.reshape(w.shape[0], -1), sparsity, bits)
                matrices.append((name, w))
        finally:
            src.close()
    if limit is not None:
        matrices = matrices[:limit]
    if not matrices:
        raise DnnzipError(f"{source}: no matrices to benchmark")
    rows = []
    rng = np.random.default_rng(0)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # BLAS then keeps its own thread count
        from contextlib import nullcontext

        def threadpool_limits(limits):  # noqa: ARG001
            return nullcontext()

    for name, w in matrices:
        dense, csr, cser = Dense(w), CSR.from_dense(w), FORMATS["cser"].from_dense(w)
        scipy_csr = sp.csr_matrix(w)
        for b in batches:
            x = rng.standard_normal((w.shape[1], b) if b > 1 else w.shape[1]).astype(np.float32)
            with threadpool_limits(limits=threads):
                t = {
                    "dense": _median_time(lambda: dense.a @ x, repeats),  # noqa: B023
                    "scipy_csr": _median_time(lambda: scipy_csr @ x, repeats),  # noqa: B023
                    "csr": _median_time(lambda: csr.dot(x, threads=threads), repeats),  # noqa: B023
                    "cser": _median_time(lambda: cser.dot(x, threads=threads), repeats),  # noqa: B023
                }
            rows.append({"name": name, "shape": list(w.shape), "batch": b, "threads": threads,
                         "nnz": cser.nnz, "density": cser.nnz / w.size,
                         "bytes": {"dense": dense.nbytes, "csr": csr.nbytes, "cser": cser.nbytes},
                         "seconds": t})
    return rows


def run_bench(args: argparse.Namespace) -> int:
    if args.what != "formats":
        raise InvalidOption(f"unknown benchmark {args.what!r} (known: formats)")
    rows = bench_matrices(args.model, sparsity=args.sparsity, bits=args.bits,
                          batches=tuple(args.batch), threads=args.threads, repeats=args.repeats,
                          include=args.include, limit=args.limit)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'matrix':44s} {'shape':>12s} {'B':>3s} {'dens':>5s} {'dense us':>9s} "
          f"{'scipy us':>9s} {'csr us':>8s} {'cser us':>8s} {'vs dense':>8s} {'vs scipy':>8s}")
    for r in rows:
        s = {k: v * 1e6 for k, v in r["seconds"].items()}
        print(f"{r['name'][:44]:44s} {str(tuple(r['shape'])):>12s} {r['batch']:3d} "
              f"{r['density']:5.2f} {s['dense']:9.1f} {s['scipy_csr']:9.1f} {s['csr']:8.1f} "
              f"{s['cser']:8.1f} {s['dense'] / s['cser']:7.2f}x {s['scipy_csr'] / s['cser']:7.2f}x")
    for b in sorted({r["batch"] for r in rows}):
        tot = {k: sum(r["seconds"][k] for r in rows if r["batch"] == b)
               for k in ("dense", "scipy_csr", "csr", "cser")}
        print(f"total batch {b}: " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in tot.items()))
    return 0


# ----------------------------------------------------------------------------- wiring


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``convert`` and ``bench`` (with ``bench formats``) to the dnnzip command."""
    p = subparsers.add_parser("convert", help="turn a .dnnz file's matrices into CER/CSER/CSR")
    p.add_argument("input", help="a .dnnz file")
    p.add_argument("-o", "--output", help="output .pt file (default: INPUT.FORMAT.pt)")
    p.add_argument("--format", default="cser", choices=CONVERT_FORMATS)
    p.add_argument("--max-distinct", type=int, default=256,
                   help="tensors with more distinct values are kept as they are")
    p.add_argument("--batch", type=int, default=1, help="expected batch, for --format auto")
    p.add_argument("--force", action="store_true", help="overwrite the output if it exists")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=run_convert)

    b = subparsers.add_parser("bench", help="benchmarks on your own model")
    b.add_argument("what", choices=("formats",), help="formats: time matrix products")
    b.add_argument("model", help="a .safetensors / .pt file, a HF model folder, or a .dnnz file")
    b.add_argument("--sparsity", type=float, default=0.9, help="pruning before quantization")
    b.add_argument("--bits", type=int, default=4, help="uniform quantization bits")
    b.add_argument("--batch", type=int, nargs="+", default=[1, 8, 64])
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--repeats", type=int, default=20)
    b.add_argument("--include", help="regex: only tensors whose name matches")
    b.add_argument("--limit", type=int, help="at most this many matrices")
    b.add_argument("--json", action="store_true")
    b.set_defaults(run=run_bench)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (the same commands as ``dnnzip convert`` / ``dnnzip bench``)."""
    parser = argparse.ArgumentParser(prog="dnnzip")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except DnnzipError as exc:
        print(f"dnnzip: error: {exc}", file=sys.stderr)
        return 1
