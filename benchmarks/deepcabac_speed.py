"""DeepCABAC throughput on all-MiniLM-L6-v2 (every ≥ 2-D float tensor, 90.7 MB of float32).

Encode and decode the whole model at NNCodec's default step (qp −32, dependent quantization)
and with scalar RDOQ, and the per-tensor unary length against g = 16 at qp −32 and −38
(``g_ablation``: size and speed), ``--repeats`` times each, with 1 and with all numba
threads; reports the best and the median wall time as MB/s of float32 weights (issue 3
goals: ≥ 35 MB/s encode, ≥ 120 MB/s decode on 2 cores). The machine's load average is
recorded with the figures: other jobs share its cores. Writes
benchmarks/results/deepcabac_speed.json.

Run: ``flock /tmp/dnnzip-heavy.lock .venv/bin/python benchmarks/deepcabac_speed.py``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numba
from deepcabac_common import RESULTS, is_lossy, load_tensors, machine_load

from dnnzip.methods.deepcabac import DeepCabacMethod

#: issue 3's throughput goals on 2 cores (MB/s of float32 weights, medians)
ENCODE_GOAL = 35.0
DECODE_GOAL = 120.0


def one_pass(tensors, method):
    """(encode seconds, decode seconds, coded bytes) of the whole model."""
    te = td = 0.0
    nbytes = 0
    for k, a in tensors.items():
        codec = method.codec_for(k, a)
        t0 = time.perf_counter()
        data = codec.encode(a)
        t1 = time.perf_counter()
        codec.decode(data, a.shape)
        td += time.perf_counter() - t1
        te += t1 - t0
        nbytes += len(data)
    return te, td, nbytes


#: the default (g chosen per tensor from mean |w|/Δ, ``cabac.auto_g``) against g = 16 everywhere
G_ABLATION = ((-38, "qp -38, dq", "qp -38, dq, g=16"), (-32, "qp -32, dq", "qp -32, dq, g=16"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tensors = {k: a for k, a in load_tensors().items() if is_lossy(a)}
    raw = sum(a.nbytes for a in tensors.values())
    out = {"float32_mb": raw / 1e6, "machine_before": machine_load(), "runs": []}
    threads = numba.config.NUMBA_NUM_THREADS
    for label, kw in (("qp -32, dq", dict(qp=-32, dq=True)),
                      ("qp -32, scalar rdoq", dict(qp=-32, dq=False)),
                      ("qp -32, dq, g=16", dict(qp=-32, dq=True, g=16)),
                      ("qp -38, dq", dict(qp=-38, dq=True)),
                      ("qp -38, dq, g=16", dict(qp=-38, dq=True, g=16))):
        method = DeepCabacMethod(**kw)
        one_pass({k: a[:2] for k, a in tensors.items()}, method)  # compile / load caches
        for n in sorted({1, threads}):
            numba.set_num_threads(n)
            enc, dec = [], []
            for _ in range(args.repeats):
                te, td, nbytes = one_pass(tensors, method)
                enc.append(raw / te / 1e6)
                dec.append(raw / td / 1e6)
            row = {"setting": label, "threads": n, "bytes": nbytes, "encode_mb_s_best": max(enc),
                   "encode_mb_s_median": statistics.median(enc), "decode_mb_s_best": max(dec),
                   "decode_mb_s_median": statistics.median(dec)}
            out["runs"].append(row)
            print(f"{label:22s} threads {n}: encode {max(enc):6.1f} MB/s (median "
                  f"{statistics.median(enc):6.1f}), decode {max(dec):6.1f} MB/s (median "
                  f"{statistics.median(dec):6.1f})", flush=True)
    out["machine_after"] = machine_load()
    out["goals"] = {"encode_mb_s": ENCODE_GOAL, "decode_mb_s": DECODE_GOAL,
                    "threads": threads, "setting": "qp -32, dq (default)"}
    default = next(r for r in out["runs"]
                   if r["setting"] == "qp -32, dq" and r["threads"] == threads)
    out["goals"]["encode_met"] = default["encode_mb_s_median"] >= ENCODE_GOAL
    out["goals"]["decode_met"] = default["decode_mb_s_median"] >= DECODE_GOAL
    print("goals:", out["goals"])
    at = {r["setting"]: r for r in out["runs"] if r["threads"] == threads}
    out["g_ablation"] = [
        {"qp": qp, "size_vs_g16": at[auto]["bytes"] / at[g16]["bytes"] - 1,
         "encode_speedup_vs_g16": at[auto]["encode_mb_s_median"] / at[g16]["encode_mb_s_median"],
         "decode_speedup_vs_g16": at[auto]["decode_mb_s_median"] / at[g16]["decode_mb_s_median"]}
        for qp, auto, g16 in G_ABLATION]
    for r in out["g_ablation"]:
        print(f"qp {r['qp']}: per-tensor g vs g=16: size {r['size_vs_g16']:+.2%}, encode "
              f"x{r['encode_speedup_vs_g16']:.2f}, decode x{r['decode_speedup_vs_g16']:.2f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "deepcabac_speed.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
