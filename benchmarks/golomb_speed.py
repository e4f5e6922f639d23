"""Throughput of the lossless integer coders on one core (SPEC §2.3, §4).

Golomb–Rice position coding (the wire format of SBC/STC): positions of a Bernoulli(p)
mask over a tensor of n elements (i.i.d. positions, geometric gaps — the model behind
b* and its expected bits per position), p = 0.01 and 0.001, n = 1e7 and 1e8. Reported:
encode and decode throughput in positions/s, measured bits per position against
b* + 1 / (1 − (1 − p)^(2^b*)). Target: >= 50 M positions/s both ways.

Huffman (Deep Compression's entropy coder): 2e7 symbols from two skewed sources — a
geometric law (run-length gaps of non-zeros) and a discretized Laplace over 32 values
(k-means indices) — coded with a table from their counts. Reported: symbols/s both
ways, code-design time, bits per symbol against the order-0 entropy.

Every figure is the median of >= 5 timed runs after a warm-up (numba compile excluded),
end to end through the public functions (validation and byte conversion included), with
numba limited to one thread.

    python benchmarks/golomb_speed.py [--quick]

Writes ``benchmarks/results/golomb_speed.json`` and ``golomb_speed.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numba  # noqa: E402
import numpy as np  # noqa: E402

from dnnzip.coding import golomb, huffman  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 50e6


def median_seconds(fn, runs: int) -> tuple[float, Any]:
    """Median wall time of ``runs`` calls of ``fn`` after one warm-up call."""
    out = fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def bernoulli_positions(n: int, p: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions of an i.i.d. Bernoulli(p) mask of n elements, built from its gaps."""
    k_max = int(n * p + 10 * np.sqrt(n * p) + 100)
    gaps = rng.geometric(p, size=k_max)  # distance to the next one, >= 1
    pos = np.cumsum(gaps) - 1
    if pos[-1] < n:
        raise RuntimeError("not enough gaps drawn")
    return pos[pos < n]


def bench_golomb(n: int, p: float, runs: int, rng: np.random.Generator) -> dict[str, Any]:
    pos = bernoulli_positions(n, p, rng)
    b = golomb.optimal_rice_parameter(p)
    t_enc, data = median_seconds(lambda: golomb.encode_positions(pos, b), runs)
    t_dec, out = median_seconds(lambda: golomb.decode_positions(data, pos.size, b, size=n), runs)
    if not np.array_equal(out, pos):
        raise AssertionError("Golomb round trip failed")
    bits = golomb.position_bits(pos, b)
    return {
        "n": n,
        "p": p,
        "k": int(pos.size),
        "b": b,
        "bytes": len(data),
        "bits_per_position": bits / pos.size,
        "expected_bits_per_position": golomb.expected_bits_per_position(p),
        "encode_s": t_enc,
        "decode_s": t_dec,
        "encode_positions_per_s": pos.size / t_enc,
        "decode_positions_per_s": pos.size / t_dec,
        "encode_elements_per_s": n / t_enc,
        "decode_elements_per_s": n / t_dec,
        "runs": runs,
    }


def skewed_symbols(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "geometric":  # run-length gaps between non-zeros, mean 20
        return (rng.geometric(0.05, size=n) - 1).astype(np.int32)
    if kind == "laplace32":  # k-means indices: 32 shared values, most weights near zero
        v = np.clip(np.rint(rng.laplace(0.0, 3.0, size=n)), -16, 15)
        return (v + 16).astype(np.int32)
    raise ValueError(kind)


def bench_huffman(kind: str, n: int, runs: int, rng: np.random.Generator) -> dict[str, Any]:
    sym = skewed_symbols(kind, n, rng)
    counts = np.bincount(sym)
    t_design, lengths = median_seconds(lambda: huffman.code_lengths(counts), runs)
    t_enc, data = median_seconds(lambda: huffman.encode(sym, lengths), runs)
    t_dec, out = median_seconds(lambda: huffman.decode(data, sym.size, lengths), runs)
    if not np.array_equal(out, sym):
        raise AssertionError("Huffman round trip failed")
    table = huffman.pack_lengths(lengths)
    return {
        "source": kind,
        "n": n,
        "alphabet": int(counts.size),
        "max_code_len": int(lengths.max()),
        "bits_per_symbol": 8 * len(data) / n,
        "entropy_bits_per_symbol": huffman.entropy_bits(counts) / n,
        "table_bytes": len(table),
        "design_s": t_design,
        "encode_s": t_enc,
        "decode_s": t_dec,
        "encode_symbols_per_s": n / t_enc,
        "decode_symbols_per_s": n / t_dec,
        "runs": runs,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    rows = [(f"Golomb p={g['p']:g}\nn={g['n']:.0e}", g["encode_positions_per_s"],
             g["decode_positions_per_s"]) for g in result["golomb"]]
    rows += [(f"Huffman {h['source']}\nn={h['n']:.0e}", h["encode_symbols_per_s"],
              h["decode_symbols_per_s"]) for h in result["huffman"]]
    labels = [r[0] for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(rows)), 4.5))
    ax.bar(x - 0.2, [r[1] / 1e6 for r in rows], 0.4, label="encode")
    ax.bar(x + 0.2, [r[2] / 1e6 for r in rows], 0.4, label="decode")
    ax.axhline(TARGET / 1e6, color="k", ls="--", lw=1, label="target 50 M/s (Golomb)")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("million positions / symbols per second (1 core)")
    ax.set_title("dnnzip lossless coders: throughput, median of runs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1e7 tensors and 2e6 symbols only")
    parser.add_argument("--runs", type=int, default=7, help="timed runs per figure (>= 5)")
    args = parser.parse_args()
    runs = max(5, args.runs)
    numba.set_num_threads(1)
    rng = np.random.default_rng(2024)

    sizes = [10**7] if args.quick else [10**7, 10**8]
    golomb_rows = []
    for n in sizes:
        for p in (0.01, 0.001):
            # tiny jobs are noisy: time more of them
            row = bench_golomb(n, p, runs if n * p >= 1e5 else 4 * runs, rng)
            golomb_rows.append(row)
            print(f"golomb  n={n:.0e} p={p:<6g} k={row['k']:>8d}  "
                  f"{row['bits_per_position']:.3f} bits/pos "
                  f"(formula {row['expected_bits_per_position']:.3f})  "
                  f"enc {row['encode_positions_per_s'] / 1e6:7.1f} M/s  "
                  f"dec {row['decode_positions_per_s'] / 1e6:7.1f} M/s", flush=True)

    n_sym = 2 * 10**6 if args.quick else 2 * 10**7
    huffman_rows = []
    for kind in ("geometric", "laplace32"):
        row = bench_huffman(kind, n_sym, runs, rng)
        huffman_rows.append(row)
        print(f"huffman {kind:<10} n={n_sym:.0e}  {row['bits_per_symbol']:.3f} bits/sym "
              f"(entropy {row['entropy_bits_per_symbol']:.3f})  "
              f"enc {row['encode_symbols_per_s'] / 1e6:7.1f} M/s  "
              f"dec {row['decode_symbols_per_s'] / 1e6:7.1f} M/s", flush=True)

    result = {
        "benchmark": "golomb_speed",
        "quick": args.quick,
        "target_positions_per_s": TARGET,
        "numba_threads": numba.get_num_threads(),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "numba": numba.__version__,
                    "numpy": np.__version__},
        "golomb": golomb_rows,
        "huffman": huffman_rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "golomb_speed-quick" if args.quick else "golomb_speed"
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, RESULTS / f"{stem}.png")
    print(f"wrote {RESULTS / (stem + '.json')} and {stem}.png")


if __name__ == "__main__":
    main()
