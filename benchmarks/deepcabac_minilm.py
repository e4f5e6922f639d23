"""DeepCABAC on all-MiniLM-L6-v2: size / fidelity curves, speed, coder efficiency, contexts.

Writes benchmarks/results/deepcabac_minilm.json and deepcabac_minilm.png.

* curves (≥ 6 points each): bits per weight (all 22.7 M parameters, kept tensors at their raw
  size) against the mean sentence-embedding cosine and the weight SNR, for
  - ``no data``: one global step (QP sweep), dependent quantization — the setting comparable to
    NNCodec without calibration data;
  - ``scalar``: the same without dependent quantization;
  - ``importance``: per-tensor QP offsets and per-weight RD weights from the Gauss–Newton
    diagonal of the normalised embedding on calibration sentences that are disjoint from the
    evaluation sentences;
* the smallest stream with cosine ≥ 0.9936 (NNCodec's default point) found by
  ``DeepCabacMethod.fit_to_metric`` with the embedding cosine as the evaluation callback;
* encode / decode throughput of the whole model (MB/s of float32 weights; the machine's load
  average is recorded: other jobs share the 2 cores);
* coded size vs the adaptive-model ideal (Σ −log2 p over coded bins), the cost of chunking,
  and the context-set / adaptation-rate measurements behind the defaults.

Run: ``flock /tmp/dnnzip-heavy.lock .venv/bin/python benchmarks/deepcabac_minilm.py``
(``--quick`` for fewer points).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from deepcabac_common import (
    NNCODEC_DEFAULT_MB,
    NNCODEC_QUOTED,
    RESULTS,
    Fidelity,
    is_lossy,
    kept_bytes,
    load_tensors,
    machine_load,
    n_params,
    sensitivity,
    weight_snr,
)

from dnnzip.coding import cabac
from dnnzip.methods.deepcabac import DeepCabacMethod, row_length

TARGET_COS = 0.9936


def code_model(tensors, method, lossy):
    """Encode + decode every lossy tensor. Returns (bytes, restored, enc s, dec s, per-tensor
    rows)."""
    method.prepare((k, tensors[k]) for k in lossy)
    total, te, td = 0, 0.0, 0.0
    restored, rows = {}, []
    for k in lossy:
        a = tensors[k]
        codec = method.codec_for(k, a)
        t0 = time.perf_counter()
        data = codec.encode(a)
        t1 = time.perf_counter()
        restored[k] = codec.decode(data, a.shape)
        t2 = time.perf_counter()
        te += t1 - t0
        td += t2 - t1
        total += len(data)
        rows.append({"name": k, "bytes": len(data), "bpw": 8 * len(data) / a.size,
                     "step": codec.step})
    return total, restored, te, td, rows


def point(tensors, lossy, fid, method, label, n_all, kept):
    total, restored, te, td, rows = code_model(tensors, method, lossy)
    size = total + kept
    cos = fid.cosine(tensors, restored)
    snr = weight_snr(tensors, restored)
    raw = sum(tensors[k].nbytes for k in lossy)
    out = {"label": label, "qp": method.global_qp, "bytes": size, "mb": size / 1e6,
           "bpw": 8 * size / n_all, "ratio": 4 * n_all / size, "cosine": cos, "snr_db": snr,
           "encode_s": te, "decode_s": td, "encode_mb_s": raw / te / 1e6,
           "decode_mb_s": raw / td / 1e6}
    print(f"{label:12s} qp {method.global_qp!s:>7} {out['mb']:7.3f} MB {out['bpw']:.3f} b/w "
          f"cos {cos:.5f} snr {snr:5.2f} dB enc {out['encode_mb_s']:.1f} MB/s dec "
          f"{out['decode_mb_s']:.1f} MB/s", flush=True)
    return out, rows


def interp_bpw(curve, key, value):
    """Bits/weight of ``curve`` at metric ``value`` (linear in the metric), None if outside."""
    pts = sorted((p[key], p["bpw"]) for p in curve)
    xs = [p[0] for p in pts]
    if not xs[0] <= value <= xs[-1]:
        return None
    return float(np.interp(value, xs, [p[1] for p in pts]))


def coder_measurements(tensors, lossy):
    """Ideal vs actual size, chunking cost, contexts / adaptation rates — on the levels of
    plain rounding at Δ = 2^-8 (NNCodec's default step), all lossy tensors."""
    levels = {k: np.rint(tensors[k] / 2.0 ** -8).astype(np.int32).ravel() for k in lossy}
    n = sum(v.size for v in levels.values())
    h0 = 0.0
    for v in levels.values():
        _, c = np.unique(v, return_counts=True)
        h0 += float(-(c * np.log2(c / c.sum())).sum())

    def coded(**kw):
        total, ideal = 0, 0.0
        for k, v in levels.items():
            p = cabac.StreamParams(n=v.size, row_len=row_length(tensors[k].shape), **kw)
            data, bits = cabac.encode_levels(v, p, measure=True)
            total += len(data)
            ideal += bits
        return total, ideal

    out = {"levels": n, "order0_entropy_bits_per_level": h0 / n}
    total, ideal = coded()
    out["default"] = {"bytes": total, "bits_per_level": 8 * total / n,
                      "ideal_bits_per_level": ideal / n,
                      "overhead_vs_ideal": 8 * total / ideal - 1,
                      "vs_order0_entropy": 8 * total / h0 - 1}
    single, _ = coded(chunk=1 << 40)
    small, _ = coded(chunk=1 << 15)
    out["chunking"] = {"default_chunk": cabac.DEFAULT_CHUNK,
                       "cost_vs_one_chunk": total / single - 1,
                       "cost_chunk_32768_vs_one_chunk": small / single - 1}
    variants = {}
    for label, kw in {"ctx_mode=0 (reference contexts)": dict(ctx_mode=0),
                      "ctx_mode=1 (+activity of prev and above)": dict(ctx_mode=1),
                      "shifts (4, 7)": dict(shifts=(4, 7)),
                      "shifts (5, 8)": dict(shifts=(5, 8)),
                      "shifts (8, 12)": dict(shifts=(8, 12)),
                      "g=10": dict(g=10), "g=24": dict(g=24)}.items():
        b, _ = coded(**kw)
        variants[label] = {"bits_per_level": 8 * b / n, "vs_default": b / total - 1}
        print(f"  {label:42s} {8 * b / n:.4f} b/level ({b / total - 1:+.3%})", flush=True)
    out["variants"] = variants
    return out


def compare_deep_compression(result) -> dict | None:
    """At each cosine of the Deep Compression benchmark's curve (``minilm_deepcompression.json``,
    the foundation codec, whole .dnnz file), our bits/weight interpolated on both curves."""
    path = RESULTS / "minilm_deepcompression.json"
    if not path.exists():
        return None
    dc = json.loads(path.read_text())
    rows = []
    for p in dc["curve"]:
        cos, bpw = p["embedding_cosine"], p["bits_per_weight"]
        row = {"deep_compression_bpw": bpw, "cosine": cos}
        for key, label in (("importance (dq)", "importance"), ("no data (dq)", "no_data")):
            ours = interp_bpw(result["curves"][key], "cosine", cos)
            row[f"ours_bpw_{label}"] = ours
            row[f"size_vs_deep_compression_{label}"] = None if ours is None else ours / bpw - 1
        rows.append(row)
    return {"source": path.name, "points": rows}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--compare-only", action="store_true",
                    help="only redo the comparison with the Deep Compression benchmark")
    args = ap.parse_args()
    if args.compare_only:
        path = RESULTS / "deepcabac_minilm.json"
        result = json.loads(path.read_text())
        result["vs_deep_compression"] = compare_deep_compression(result)
        path.write_text(json.dumps(result, indent=1))
        print(json.dumps(result["vs_deep_compression"], indent=1))
        return
    tensors = load_tensors()
    lossy = [k for k, a in tensors.items() if is_lossy(a)]
    n_all, kept = n_params(tensors), kept_bytes(tensors)
    fid = Fidelity()
    sens = sensitivity(fid, Path(tempfile.gettempdir()) / "dnnzip-minilm-sensitivity.npz")
    result = {"model": "all-MiniLM-L6-v2", "params": n_all, "kept_bytes": kept,
              "float32_mb": 4 * n_all / 1e6, "machine": machine_load(),
              "nncodec_quoted": NNCODEC_QUOTED}

    print("coder measurements (levels of Δ = 2^-8):")
    result["coder"] = coder_measurements(tensors, lossy)

    qps = [-38, -34, -32, -30, -28, -26] if args.quick else [-40, -38, -36, -34, -32, -30,
                                                              -28, -26]
    curves = {"no data (dq)": [], "scalar (no dq, rdoq)": [], "importance (dq)": []}
    per_tensor = {}
    for qp in qps:
        p, _ = point(tensors, lossy, fid, DeepCabacMethod(qp=qp, dq=True), "no data", n_all,
                     kept)
        curves["no data (dq)"].append(p)
    for qp in [-38, -36, -34, -32, -30, -28] if not args.quick else [-36, -32, -28]:
        p, _ = point(tensors, lossy, fid, DeepCabacMethod(qp=qp, dq=False), "scalar", n_all,
                     kept)
        curves["scalar (no dq, rdoq)"].append(p)
    for qp in [-36, -32, -29, -27, -25, -23, -21, -19]:
        p, rows = point(tensors, lossy, fid, DeepCabacMethod(qp=qp, dq=True, importance=sens),
                        "importance", n_all, kept)
        curves["importance (dq)"].append(p)
        per_tensor[qp] = rows
    # the same offsets without per-weight RD weights (importance_floor = 1: F_i ≡ F̄_t)
    curves["importance offsets only (dq)"] = []
    for qp in [-32, -29, -27, -25, -23, -21]:
        p, _ = point(tensors, lossy, fid,
                     DeepCabacMethod(qp=qp, dq=True, importance=sens, importance_floor=1.0),
                     "offsets only", n_all, kept)
        curves["importance offsets only (dq)"].append(p)
    result["curves"] = curves

    # smallest stream at cosine >= 0.9936, searched with the evaluation callback
    m = DeepCabacMethod(dq=True, importance=sens)
    sub = {k: tensors[k] for k in lossy}
    t0 = time.perf_counter()
    res = m.fit_to_metric(sub, lambda restored: fid.cosine(tensors, restored), TARGET_COS,
                          qp_range=(-34.0, -18.0), tol=0.25)
    search_s = time.perf_counter() - t0
    best, rows = point(tensors, lossy, fid, m, "search", n_all, kept)
    best["search_seconds"] = search_s
    best["search_trials"] = res.trials
    best["per_tensor"] = rows
    result["at_target_cosine"] = best
    result["figures"] = {
        "size_at_cos_0.9936_mb": best["mb"],
        "size_goal_mb": 0.85 * NNCODEC_DEFAULT_MB,
        "size_vs_nncodec_quoted": best["mb"] / NNCODEC_DEFAULT_MB - 1,
        "curve_vs_nncodec_quoted_cosine": [
            {"nncodec": q["setting"], "nncodec_bpw": q["bpw"], "cosine": q["cosine"],
             "ours_bpw_importance": interp_bpw(curves["importance (dq)"], "cosine", q["cosine"]),
             "ours_bpw_no_data": interp_bpw(curves["no data (dq)"], "cosine", q["cosine"])}
            for q in NNCODEC_QUOTED],
        "snr_vs_nncodec_quoted": [
            {"nncodec": q["setting"], "nncodec_bpw": q["bpw"], "snr_db": q["snr_db"],
             "ours_bpw_no_data": interp_bpw(
                 curves["no data (dq)" if "no DQ" not in q["setting"]
                        else "scalar (no dq, rdoq)"], "snr_db", q["snr_db"])}
            for q in NNCODEC_QUOTED],
    }
    ref = [p for p in curves["no data (dq)"] if p["qp"] == -32][0]
    result["figures"]["throughput_qp-32_dq"] = {
        "encode_mb_s": ref["encode_mb_s"], "decode_mb_s": ref["decode_mb_s"],
        "goal_encode_mb_s": 35, "goal_decode_mb_s": 120}
    result["vs_deep_compression"] = compare_deep_compression(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "deepcabac_minilm.json").write_text(json.dumps(result, indent=1))
    plot(result)
    print(json.dumps(result["figures"], indent=1))


def plot(result) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, pts in result["curves"].items():
        pts = sorted(pts, key=lambda p: p["bpw"])
        axes[0].plot([p["bpw"] for p in pts], [1 - p["cosine"] for p in pts], "o-", label=label)
        axes[1].plot([p["bpw"] for p in pts], [p["snr_db"] for p in pts], "o-", label=label)
    q = result["nncodec_quoted"]
    axes[0].plot([p["bpw"] for p in q], [1 - p["cosine"] for p in q], "k*", ms=10,
                 label="NNCodec 2.1.3 (quoted)")
    axes[1].plot([p["bpw"] for p in q], [p["snr_db"] for p in q], "k*", ms=10,
                 label="NNCodec 2.1.3 (quoted)")
    best = result["at_target_cosine"]
    axes[0].plot([best["bpw"]], [1 - best["cosine"]], "rs", ms=9, label="searched: cos ≥ 0.9936")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("bits per weight")
    axes[0].set_ylabel("1 − mean embedding cosine")
    axes[1].set_xlabel("bits per weight")
    axes[1].set_ylabel("weight SNR (dB)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("DeepCABAC on all-MiniLM-L6-v2")
    fig.tight_layout()
    fig.savefig(RESULTS / "deepcabac_minilm.png", dpi=120)


if __name__ == "__main__":
    main()
