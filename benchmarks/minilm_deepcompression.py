"""Deep Compression on all-MiniLM-L6-v2, post-training (no data): size/fidelity curve,
Huffman vs fixed-length codes vs order-0 entropy, time and peak memory.

    ./run bench minilm_deepcompression [--quick]

Writes benchmarks/results/minilm_deepcompression.json and .png. Fidelity is the mean cosine
between sentence embeddings of the original and the restored model over dnnzip.demo's 60
sentences. Reference points (NNCodec, int8+zstd) are the figures quoted in issue 2, not measured
here, and are labelled so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dnnzip  # noqa: E402
from dnnzip import demo  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SETTINGS = [
    {"bits": 4},
    {"bits": 5},
    {"bits": 6},
    {"bits": 7},
    {"bits": 8},
    {"bits": 6, "sparsity": 0.3},
    {"bits": 7, "sparsity": 0.5},
]
QUOTED = {  # issue 2 / issue 3, measured by the author, not by this script
    "NNCodec qp-32 (quoted)": {"ratio": 6.48, "cosine": 0.9936},
    "int8 + zstd (quoted)": {"ratio": 6.3, "cosine": 0.966},
}

MEMORY_PROBE = r"""
import os, sys, time, tracemalloc
os.environ["HF_HUB_OFFLINE"] = "1"
import dnnzip
def status(key):  # kB → bytes; VmHWM is this process's peak RSS (ru_maxrss survives exec)
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
src, out, back = sys.argv[1:4]
base_rss = status("VmRSS")
tracemalloc.start()
t0 = time.perf_counter()
dnnzip.compress(src, out, bits=int(sys.argv[4]), progress=False)
t1 = time.perf_counter()
dnnzip.decompress(out, back, progress=False)
t2 = time.perf_counter()
peak = tracemalloc.get_traced_memory()[1]
rss = status("VmHWM")
print(t1 - t0, t2 - t1, peak, base_rss, rss)
"""


def measure_curve(settings: list[dict]) -> list[dict]:
    encoder = demo.load_encoder()
    reference = demo.embed(encoder)
    original = {k: v.clone() for k, v in encoder[0].auto_model.state_dict().items()}
    model_file = demo.minilm_path() / "model.safetensors"
    rows = []
    for opts in settings:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "m.dnnz"
            t0 = time.perf_counter()
            report = dnnzip.compress(model_file, out, progress=False, **opts)
            t1 = time.perf_counter()
            restored = dnnzip.decompress(out, progress=False)
            t2 = time.perf_counter()
        cosine = demo.embedding_cosine(reference, encoder, restored)
        encoder[0].auto_model.load_state_dict(original)
        tot = report.totals()
        coded = [r for r in report.rows if r.codec == "deepcompression"]
        energy_w = sum(r.numel for r in coded)
        snr = [r.stats["snr_db"] for r in coded if r.stats.get("snr_db") is not None]
        row = {
            "options": opts,
            "ratio": tot["ratio"],
            "ratio_vs_float32": tot["ratio_vs_float32"],
            "compressed_bytes": tot["compressed_bytes"],
            "bits_per_weight": tot["bits_per_weight"],
            "embedding_cosine": cosine,
            "mean_tensor_snr_db": statistics.fmean(snr) if snr else None,
            "huffman_bits": tot["huffman_bits"],
            "fixed_length_bits": tot["fixed_length_bits"],
            "entropy_bits": tot["entropy_bits"],
            "huffman_saving_vs_fixed": tot["huffman_saving_vs_fixed"],
            "huffman_over_entropy": tot["huffman_bits"] / tot["entropy_bits"],
            "coded_weights": energy_w,
            "compress_s": t1 - t0,
            "decompress_s": t2 - t1,
        }
        rows.append(row)
        print(
            f"{json.dumps(opts):34s} {row['ratio']:6.2f}×  {row['bits_per_weight']:.2f} b/w  "
            f"cos {cosine:.4f}  Huffman saves {row['huffman_saving_vs_fixed']:.1%} "
            f"(entropy {tot['entropy_bits'] / tot['huffman_bits']:.1%} of Huffman)  "
            f"{row['compress_s']:.1f}+{row['decompress_s']:.1f} s",
            flush=True,
        )
    return rows


def measure_time_memory(bits: int, runs: int) -> dict:
    """File → .dnnz → .safetensors in a fresh process: wall time, tracemalloc peak, RSS."""
    model_file = demo.minilm_path() / "model.safetensors"
    samples = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-c", MEMORY_PROBE, str(model_file), f"{tmp}/m.dnnz",
                   f"{tmp}/r.safetensors", str(bits)]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            samples.append([float(x) for x in out.stdout.split()])
    med = [statistics.median(col) for col in zip(*samples, strict=True)]
    float32_bytes = 22_713_216 * 4
    return {
        "bits": bits,
        "runs": runs,
        "compress_s": med[0],
        "decompress_s": med[1],
        "total_s": med[0] + med[1],
        "traced_peak_bytes": med[2],
        "traced_peak_over_float32_model": med[2] / float32_bytes,
        "rss_after_imports_bytes": med[3],
        "rss_peak_bytes": med[4],
        "rss_growth_over_float32_model": (med[4] - med[3]) / float32_bytes,
        "float32_model_bytes": float32_bytes,
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    plain = [r for r in rows if "sparsity" not in r["options"]]
    pruned = [r for r in rows if "sparsity" in r["options"]]
    ax.plot([r["ratio"] for r in plain], [r["embedding_cosine"] for r in plain], "o-",
            label="dnnzip Deep Compression (k-means + Huffman)")  # fmt: skip
    for r in plain:
        ax.annotate(f"{r['options']['bits']} bit", (r["ratio"], r["embedding_cosine"]),
                    textcoords="offset points", xytext=(4, -10), fontsize=8)  # fmt: skip
    if pruned:
        ax.plot([r["ratio"] for r in pruned], [r["embedding_cosine"] for r in pruned], "s",
                label="with pruning")  # fmt: skip
    for name, q in QUOTED.items():
        ax.plot(q["ratio"], q["cosine"], "x", ms=9, label=name)
    ax.axhline(0.99, color="grey", lw=0.8, ls="--")
    ax.axvline(6.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("compression ratio (float32 model / .dnnz file, everything counted)")
    ax.set_ylabel("mean sentence-embedding cosine")
    ax.set_title("all-MiniLM-L6-v2, post-training, no data")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="three settings, one timing run")
    ap.add_argument("--runs", type=int, default=3, help="timing/memory runs (median)")
    args = ap.parse_args()
    settings = SETTINGS[1:4] if args.quick else SETTINGS
    rows = measure_curve(settings)
    timing = measure_time_memory(demo.DEMO_BITS, 1 if args.quick else args.runs)
    t = timing
    print(
        f"compress+decompress (bits {t['bits']}, median of {t['runs']}): "
        f"{t['compress_s']:.1f} + {t['decompress_s']:.1f} s; traced peak "
        f"{t['traced_peak_bytes'] / 1e6:.0f} MB = {t['traced_peak_over_float32_model']:.2f}× "
        f"the float32 model; RSS {t['rss_after_imports_bytes'] / 1e6:.0f} MB after imports, "
        f"{t['rss_peak_bytes'] / 1e6:.0f} MB peak"
    )
    best = [r for r in rows if r["embedding_cosine"] >= 0.99]
    result = {
        "model": "all-MiniLM-L6-v2",
        "curve": rows,
        "time_memory": timing,
        "best_ratio_at_cosine_0.99": max((r["ratio"] for r in best), default=None),
        "quoted_references": QUOTED,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "minilm_deepcompression.json").write_text(json.dumps(result, indent=1))
    plot(rows, RESULTS / "minilm_deepcompression.png")
    print(f"wrote {RESULTS / 'minilm_deepcompression.json'} and .png")


if __name__ == "__main__":
    main()
