"""Hook overhead: compression + coding time per step against the dense DDP step.

2 workers (gloo), the 1.13 M-parameter digits MLP, SBC at p = 0.01 through ``sbc_hook``
(with and without momentum correction; float64 residual, and the float32 option), batch
sizes 32 and 256 per worker. For each: median
dense step, median SBC step, and the hook's own compress + code time per step (selection,
residual, Golomb encode/decode, averaging; not the waiting in the collectives). Writes
benchmarks/results/distributed_overhead.{json,png}.

    flock /tmp/dnnzip-heavy.lock .venv/bin/python benchmarks/distributed_overhead.py
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from dnnzip.distributed.demo import TrainConfig, run_training

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "distributed_overhead"))
    args = ap.parse_args()
    rows = []
    for bs in args.batch_sizes:
        dense_steps = []
        for rep in range(args.repeats):
            d = run_training(TrainConfig(method="dense", steps=args.steps, batch_size=bs,
                                         seed=rep))
            dense_steps.append(d["step_time_median"])
        for momentum, rdtype in ((0.0, "float64"), (0.9, "float64"), (0.0, "float32")):
            sbc_steps, hook = [], []
            for rep in range(args.repeats):
                s = run_training(TrainConfig(method="sbc", p=0.01, steps=args.steps,
                                             batch_size=bs, momentum=momentum, seed=rep,
                                             residual_dtype=rdtype))
                sbc_steps.append(s["step_time_median"])
                hook.append(s["timings"]["compress_code_per_exchange"])
            row = {"batch_size": bs, "momentum_correction": momentum > 0,
                   "residual_dtype": rdtype, "n_params": d["n_params"],
                   "dense_step_ms": float(np.median(dense_steps)) * 1e3,
                   "sbc_step_ms": float(np.median(sbc_steps)) * 1e3,
                   "hook_compress_code_ms": float(np.median(hook)) * 1e3,
                   "dense_step_ms_all": [x * 1e3 for x in dense_steps],
                   "hook_compress_code_ms_all": [x * 1e3 for x in hook]}
            row["overhead_fraction"] = row["hook_compress_code_ms"] / row["dense_step_ms"]
            row["goal_met"] = row["overhead_fraction"] <= 0.20
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if not k.endswith("_all")}),
                  flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump({"config": vars(args), "rows": rows}, f, indent=1)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [f"b{r['batch_size']}{' +mom' if r['momentum_correction'] else ''}"
              f"{' f32' if r['residual_dtype'] == 'float32' else ''}" for r in rows]
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["dense_step_ms"] for r in rows], 0.4, label="dense DDP step")
    ax.bar(x + 0.2, [r["hook_compress_code_ms"] for r in rows], 0.4,
           label="SBC hook: compress + code")
    ax.plot(x, [0.2 * r["dense_step_ms"] for r in rows], "k_", markersize=30,
            label="20% of dense step")
    ax.set_xticks(x, labels)
    ax.set_ylabel("ms per step")
    ax.set_title("1.13 M-parameter MLP, 2 workers, p = 0.01")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out + ".png", dpi=120)


if __name__ == "__main__":
    main()
