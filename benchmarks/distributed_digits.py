"""SBC on real worker processes: 2 workers, gloo, digits, 1.1 M-parameter MLP.

Runs dense all-reduce (DDP) and SBC at (n, p) = (1, 0.01), (1, 0.001) [DDP hook] and
(10, 0.01), (10, 0.001) [SBCAverager], each over several seeds, for the same number of
samples. Reports per setting: test accuracy (median, spread, gap to dense), upstream
compression (exact Golomb bits and bytes actually sent; whole run and after the hook's
dense warm-up) against theory 32·n / (p·b̄), replica equality, and for the hook the
compression + coding time per step against the dense step. Writes
benchmarks/results/distributed_digits.{json,png}.

    flock /tmp/dnnzip-heavy.lock .venv/bin/python benchmarks/distributed_digits.py
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from dnnzip.coding.golomb import expected_bits_per_position
from dnnzip.distributed.demo import TrainConfig, run_training

HERE = os.path.dirname(os.path.abspath(__file__))
SETTINGS = [("dense", 1.0, 1), ("sbc", 0.01, 1), ("sbc", 0.001, 1), ("sbc", 0.01, 10),
            ("sbc", 0.001, 10)]
GOALS = {(0.01, 1): 350, (0.001, 1): 2500, (0.01, 10): 3500, (0.001, 10): 25000}


def key(method: str, p: float, n: int) -> str:
    return "dense" if method == "dense" else f"sbc_p{p}_n{n}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--hidden", type=int, nargs="+", default=[1024, 1024])
    ap.add_argument("--out", default=os.path.join(HERE, "results", "distributed_digits"))
    args = ap.parse_args()

    runs: dict[str, list[dict]] = {key(*s): [] for s in SETTINGS}
    for seed in args.seeds:
        for method, p, n in SETTINGS:
            cfg = TrainConfig(method=method, p=p, delay=n, steps=args.steps, seed=seed,
                              lr=args.lr, batch_size=args.batch_size,
                              hidden=tuple(args.hidden), eval_every=max(1, args.steps // 20))
            t0 = time.perf_counter()
            r = run_training(cfg, timeout=1800)
            r["wall_seconds"] = time.perf_counter() - t0
            runs[key(method, p, n)].append(r)
            print(f"seed {seed} {key(method, p, n):>16}: acc {r['accuracy']:.2f}%  "
                  f"x{r['ledger']['ratio_golomb']:.0f} (after warm-up "
                  f"x{r['ledger_after_warmup']['ratio_golomb']:.0f}, bytes "
                  f"x{r['ledger_after_warmup']['ratio_sent']:.0f})  diff {r['max_replica_diff']}"
                  f"  step {r['step_time_median'] * 1e3:.1f} ms  {r['wall_seconds']:.0f} s",
                  flush=True)

    dense_acc = [r["accuracy"] for r in runs["dense"]]
    dense_step = float(np.median([r["step_time_median"] for r in runs["dense"]]))
    summary: dict[str, dict] = {
        "dense": {"accuracy": dense_acc, "accuracy_median": float(np.median(dense_acc)),
                  "step_ms_median": dense_step * 1e3,
                  "max_replica_diff": max(r["max_replica_diff"] for r in runs["dense"])}}
    for method, p, n in SETTINGS[1:]:
        rs = runs[key(method, p, n)]
        acc = [r["accuracy"] for r in rs]
        gap = [d - a for d, a in zip(dense_acc, acc, strict=True)]
        b_bar = expected_bits_per_position(p)
        theory = 32 * n / (p * b_bar)

        def med(field: str, part: str, rs: list[dict] = rs) -> float:
            return float(np.median([r[part][field] for r in rs]))

        s = {
            "accuracy": acc, "accuracy_median": float(np.median(acc)),
            "accuracy_min": min(acc), "accuracy_max": max(acc),
            "gap_to_dense_points": gap, "gap_median": float(np.median(gap)),
            "gap_of_medians": float(np.median(dense_acc) - np.median(acc)),
            "theory_ratio": theory, "goal_ratio": GOALS[(p, n)],
            "ratio_golomb": med("ratio_golomb", "ledger"),
            "ratio_sent": med("ratio_sent", "ledger"),
            "ratio_golomb_after_warmup": med("ratio_golomb", "ledger_after_warmup"),
            "ratio_sent_after_warmup": med("ratio_sent", "ledger_after_warmup"),
            "max_replica_diff": max(r["max_replica_diff"] for r in rs),
            "step_ms_median": float(np.median([r["step_time_median"] for r in rs])) * 1e3,
        }
        if n == 1:
            per_call = [r["timings"]["compress_code_per_step"] for r in rs]
            s["hook_compress_code_ms_per_step"] = float(np.median(per_call)) * 1e3
            s["hook_overhead_fraction_of_dense_step"] = float(np.median(per_call)) / dense_step
        s["goal_ratio_met_after_warmup"] = s["ratio_sent_after_warmup"] >= GOALS[(p, n)]
        s["goal_ratio_met_whole_run"] = s["ratio_sent"] >= GOALS[(p, n)]
        s["goal_accuracy_met"] = s["gap_of_medians"] <= 1.5
        summary[key(method, p, n)] = s
    print(json.dumps(summary, indent=1))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump({"config": vars(args), "n_params": runs["dense"][0]["n_params"],
                   "summary": summary, "runs": runs}, f, indent=1)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (method, p, n) in enumerate(SETTINGS):
        for j, r in enumerate(runs[key(method, p, n)]):
            c = r["curve"]
            ax.plot([max(1, h["bytes"]) * 8 for h in c], [h["accuracy"] for h in c],
                    color=f"C{i}", alpha=0.8, label=key(method, p, n) if j == 0 else None)
    ax.set_xscale("log")
    ax.set_xlabel("upstream bits sent per worker")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("digits, 2 workers (gloo)")
    ax.legend(fontsize=8)
    names = [key(*s) for s in SETTINGS[1:]]
    x = np.arange(len(names))
    bx.bar(x - 0.27, [summary[k]["theory_ratio"] for k in names], 0.27, label="theory")
    bx.bar(x, [summary[k]["ratio_sent_after_warmup"] for k in names], 0.27,
           label="measured (bytes sent, after warm-up)")
    bx.bar(x + 0.27, [summary[k]["ratio_sent"] for k in names], 0.27,
           label="measured (whole run)")
    bx.scatter(x, [summary[k]["goal_ratio"] for k in names], color="k", marker="_", s=400,
               label="goal", zorder=3)
    bx.set_yscale("log")
    bx.set_xticks(x, names, fontsize=8)
    bx.set_ylabel("upstream compression (x)")
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out + ".png", dpi=120)


if __name__ == "__main__":
    main()
