"""Federated learning on digits: STC up and down vs FedAvg with dense updates.

100 clients, 10 per round, non-IID (2 classes per client), both runs for the same number of
rounds and local steps; over several seeds. Reports accuracy, total bits (upstream,
downstream with catch-up for partial participation, both) and the saving, and writes
benchmarks/results/federated_digits.{json,png}.

    flock /tmp/dnnzip-heavy.lock .venv/bin/python benchmarks/federated_digits.py
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from dnnzip.distributed import FederatedSimulator, split_non_iid
from dnnzip.distributed.demo import load_digits_split, make_mlp

HERE = os.path.dirname(os.path.abspath(__file__))


def run(method: str, seed: int, args) -> dict:
    torch.set_num_threads(1)
    xtr, ytr, xte, yte = load_digits_split(seed)
    parts = split_non_iid(ytr.numpy(), args.clients, 2, seed)
    clients = [(xtr[torch.from_numpy(p)], ytr[torch.from_numpy(p)]) for p in parts]
    model = make_mlp(tuple(args.hidden), seed)
    if method == "stc":
        kw = dict(up="stc", p_up=args.p_up, down="stc", p_down=args.p_down)
    else:
        kw = dict(up="dense", down=None)
    sim = FederatedSimulator(model, clients, clients_per_round=args.per_round,
                             local_steps=args.local_steps, batch_size=args.batch_size,
                             lr=args.lr, seed=seed, **kw)

    def accuracy(m):
        with torch.no_grad():
            return float((m(xte).argmax(1) == yte).float().mean()) * 100

    t0 = time.perf_counter()
    hist = sim.run(args.rounds, evaluate=accuracy, eval_every=max(1, args.rounds // 25))
    up, down = sim.ledger.totals("up"), sim.ledger.totals("down")
    both = sim.ledger.combined()
    # the same run under shared-broadcast accounting: each round's server message once
    bcast = sum(sim.broadcast_bits) if method == "stc" else 32 * sim.numel * args.rounds
    return {"method": method, "seed": seed, "accuracy": hist[-1]["metric"],
            "seconds": time.perf_counter() - t0, "up": up, "down_catch_up": down,
            "total_catch_up": both,
            "down_broadcast_bits": bcast, "total_broadcast_bits": up["golomb_bits"] + bcast,
            "n_params": sim.numel, "curve": hist}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=600)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--per-round", type=int, default=10)
    ap.add_argument("--local-steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--p-up", type=float, default=0.0008)
    ap.add_argument("--p-down", type=float, default=0.0002)
    ap.add_argument("--hidden", type=int, nargs="+", default=[512, 512])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default=os.path.join(HERE, "results", "federated_digits"))
    args = ap.parse_args()

    runs = []
    for seed in args.seeds:
        for method in ("fedavg", "stc"):
            r = run(method, seed, args)
            runs.append(r)
            print(f"seed {seed} {method:>6}: acc {r['accuracy']:.2f}%  "
                  f"up x{r['up']['ratio_golomb']:.0f}  "
                  f"down x{r['down_catch_up']['ratio_golomb']:.0f}  "
                  f"total x{r['total_catch_up']['ratio_golomb']:.0f} "
                  f"(bytes x{r['total_catch_up']['ratio_sent']:.0f})  {r['seconds']:.0f} s",
                  flush=True)
    dense = {r["seed"]: r for r in runs if r["method"] == "fedavg"}
    stc = {r["seed"]: r for r in runs if r["method"] == "stc"}
    loss = [dense[s]["accuracy"] - stc[s]["accuracy"] for s in args.seeds]
    saving = [dense[s]["total_catch_up"]["golomb_bits"] / stc[s]["total_catch_up"]["golomb_bits"]
              for s in args.seeds]
    saving_bytes = [dense[s]["total_catch_up"]["sent_bytes"]
                    / stc[s]["total_catch_up"]["sent_bytes"] for s in args.seeds]
    saving_bcast = [dense[s]["total_broadcast_bits"] / stc[s]["total_broadcast_bits"]
                    for s in args.seeds]
    saving_up = [dense[s]["up"]["golomb_bits"] / stc[s]["up"]["golomb_bits"]
                 for s in args.seeds]
    summary = {
        "fedavg_accuracy": [dense[s]["accuracy"] for s in args.seeds],
        "stc_accuracy": [stc[s]["accuracy"] for s in args.seeds],
        "accuracy_loss_points": loss,
        "accuracy_loss_median": float(np.median(loss)),
        "total_bits_saving": saving,
        "total_bits_saving_median": float(np.median(saving)),
        "total_bytes_saving_median": float(np.median(saving_bytes)),
        "total_bits_saving_broadcast_accounting": saving_bcast,
        "upstream_bits_saving": saving_up,
        "goal": "total saving >= 1000 at <= 2 points accuracy loss (catch-up accounting)",
        "goal_met": bool(np.median(saving) >= 1000 and np.median(loss) <= 2.0),
        "goal_met_broadcast_accounting": bool(np.median(saving_bcast) >= 1000
                                              and np.median(loss) <= 2.0),
    }
    print(json.dumps(summary, indent=1))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump({"config": vars(args), "summary": summary, "runs": runs}, f, indent=1)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for r in runs:
        c = r["curve"]
        bits = [h["up_bits"] + h["down_bits"] for h in c]
        ax.plot(bits, [h["metric"] for h in c], color="C0" if r["method"] == "stc" else "C1",
                alpha=0.8, label=f"{r['method']} seed {r['seed']}")
    ax.set_xscale("log")
    ax.set_xlabel("total bits exchanged (up + down, all clients)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"digits, {args.clients} clients, {args.per_round}/round, 2 classes each")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out + ".png", dpi=120)


if __name__ == "__main__":
    main()
