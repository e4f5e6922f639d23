"""Real multi-process training on scikit-learn's digits, for ``dnnzip train-demo`` and benchmarks.

``run_training(TrainConfig(...))`` spawns ``workers`` processes (torch.multiprocessing,
gloo on 127.0.0.1, a free port chosen here), each training an MLP on its shard of the
digits training set:

* method "dense": DDP with its built-in all-reduce (the baseline);
* delay 1: DDP with :func:`sbc_hook`;
* delay n > 1: local SGD with :class:`SBCAverager`.

Every worker reports test accuracy, the ledger, timings and a checksum; the parent also
checks that all replicas ended bitwise identical (max |diff| between ranks' parameters).
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from ..codec import DnnzipError, InvalidOption
from .averager import SBCAverager
from .core import METHODS, check_density
from .hook import SBCState, sbc_hook
from .ledger import BitLedger

__all__ = ["TrainConfig", "free_port", "load_digits_split", "make_mlp", "run_training"]


@dataclass
class TrainConfig:
    """Settings of one distributed digits run."""

    method: str = "sbc"
    p: float = 0.01
    delay: int = 1
    workers: int = 2
    steps: int = 2000
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    hidden: tuple[int, ...] = (1024, 1024)
    seed: int = 0
    wire: str = "golomb"
    warmup_steps: int = 2
    min_compress_numel: int = 0
    timeout: float = 60.0
    eval_every: int = 0
    residual_dtype: str = "float64"
    fail_rank: int = -1  # fault injection for tests: this rank exits at ``fail_step``
    fail_step: int = -1
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise InvalidOption(f"unknown method {self.method!r} (known: {', '.join(METHODS)})")
        if self.method != "dense":
            check_density(self.p)
        if self.delay < 1 or self.workers < 1 or self.steps < 1 or self.batch_size < 1:
            raise InvalidOption("delay, workers, steps and batch_size must be positive")
        if self.delay > 1 and self.steps % self.delay:
            raise InvalidOption(f"steps ({self.steps}) must be a multiple of delay ({self.delay})")


def load_digits_split(seed: int = 0, test_fraction: float = 0.3):
    """Standardised digits (8×8 → 64 features): (x_train, y_train, x_test, y_test) tensors."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise DnnzipError("the digits demo needs scikit-learn: pip install dnnzip[bench]") from exc
    data = load_digits()
    x = data.data.astype(np.float32) / 16.0
    y = data.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    te, tr = order[:n_test], order[n_test:]
    mean, std = x[tr].mean(0), x[tr].std(0) + 1e-3
    x = (x - mean) / std
    return (torch.from_numpy(x[tr]), torch.from_numpy(y[tr]),
            torch.from_numpy(x[te]), torch.from_numpy(y[te]))


def make_mlp(hidden: tuple[int, ...] = (1024, 1024), seed: int = 0,
             n_in: int = 64, n_out: int = 10) -> nn.Module:
    """ReLU MLP; (1024, 1024) has 1.13 M parameters."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    last = n_in
    for h in hidden:
        layers += [nn.Linear(last, h), nn.ReLU()]
        last = h
    layers.append(nn.Linear(last, n_out))
    return nn.Sequential(*layers)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean()) * 100.0


def _worker(rank: int, cfg_dict: dict[str, Any], port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    cfg = TrainConfig(**{**cfg_dict, "hidden": tuple(cfg_dict["hidden"])})
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=cfg.workers, timeout=timedelta(seconds=cfg.timeout))
    try:
        result = _train(rank, cfg)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
        # no worker tears its process group down while the peer's last collective may still
        # be in flight: gloo's worker threads otherwise abort ("terminate called without an
        # active exception", seen once in ~10 runs)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _train(rank: int, cfg: TrainConfig) -> dict[str, Any]:
    xtr, ytr, xte, yte = load_digits_split(cfg.seed)
    shard = torch.arange(rank, len(ytr), cfg.workers)
    xs, ys = xtr[shard], ytr[shard]
    model = make_mlp(cfg.hidden, cfg.seed)
    ledger = BitLedger()
    n_params = sum(prm.numel() for prm in model.parameters())
    averager = state = None
    opt_momentum = cfg.momentum
    if cfg.delay > 1:
        averager = SBCAverager(model, cfg.p if cfg.method != "dense" else 1.0, delay=cfg.delay,
                               method=cfg.method, wire=cfg.wire, ledger=ledger,
                               min_compress_numel=cfg.min_compress_numel,
                               residual_dtype=getattr(torch, cfg.residual_dtype))
        net: nn.Module = model
    else:
        net = nn.parallel.DistributedDataParallel(model)
        if cfg.method != "dense":
            state = SBCState(model, cfg.p, method=cfg.method, wire=cfg.wire, ledger=ledger,
                             warmup_steps=cfg.warmup_steps, momentum=cfg.momentum,
                             min_compress_numel=cfg.min_compress_numel,
                             residual_dtype=getattr(torch, cfg.residual_dtype))
            net.register_comm_hook(state, sbc_hook)
            opt_momentum = 0.0  # momentum correction happens inside the hook
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=opt_momentum)
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    step_times = []
    curve = []
    for step in range(cfg.steps):
        if step == cfg.fail_step and rank == cfg.fail_rank:
            os._exit(3)  # simulate a crashed worker
        t0 = time.perf_counter()
        idx = torch.randint(0, len(ys), (cfg.batch_size,), generator=gen)
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(net(xs[idx]), ys[idx])
        loss.backward()
        opt.step()
        if averager is not None:
            averager.step()
        elif state is None:  # dense DDP: count what its all-reduce exchanged
            ledger.record(step, dense_bits=32 * n_params, golomb_bits=32 * n_params,
                          sent_bytes=4 * n_params)
        step_times.append(time.perf_counter() - t0)
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0:
            up = ledger.totals("up")
            curve.append({"step": step + 1, "accuracy": _accuracy(model, xte, yte),
                          "bits": up["golomb_bits"], "bytes": up["sent_bytes"]})
    flat = torch.cat([prm.detach().reshape(-1) for prm in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(cfg.workers)]
    dist.all_gather(gathered, flat)
    max_diff = max(float((g - flat).abs().max()) for g in gathered) if flat.numel() else 0.0
    exch = (averager or state).exchanger if (averager or state) is not None else None
    timings = dict(exch.timings) if exch is not None else {}
    if exch is not None:
        # per compressed step (hook: every step after the warm-up, all buckets together;
        # averager: every sync): all of this worker's own work in the exchange — residual,
        # selection, Golomb encode, decode of every worker's packet, averaging, the hook's
        # bookkeeping — i.e. everything but the time inside the all-gathers
        exchanges = cfg.steps - cfg.warmup_steps if state is not None else averager.syncs
        own = timings["total"] - timings["collective"] + timings.get("hook_outside", 0.0)
        timings["compress_code_per_step"] = own / max(1, exchanges)
        per_step = list(exch.own_per_step.values())
        timings["compress_code_median_step"] = float(np.median(per_step)) if per_step else 0.0
        timings["compress_code_max_step"] = float(max(per_step)) if per_step else 0.0
        timings["collective_per_step"] = timings["collective"] / max(1, exchanges)
        timings["exchanges"] = exchanges
    return {
        "rank": rank,
        "accuracy": _accuracy(model, xte, yte),
        "max_replica_diff": max_diff,
        "n_params": n_params,
        "ledger": ledger.totals("up"),
        "ledger_after_warmup": _totals_from(ledger, cfg.warmup_steps if state is not None else 0),
        "step_time_median": float(np.median(step_times)),
        "step_time_mean": float(np.mean(step_times)),
        "timings": timings,
        "curve": curve,
    }


def _totals_from(ledger: BitLedger, first_step: int) -> dict[str, float]:
    """Ledger totals over steps >= first_step (the steady state after the dense warm-up)."""
    rows = [r for r in ledger.per_step("up") if r["step"] >= first_step]
    dense_bits = sum(r["dense_bits"] for r in rows)
    golomb = sum(r["golomb_bits"] for r in rows)
    sent = 8 * sum(r["sent_bytes"] for r in rows)
    return {"dense_bits": dense_bits, "golomb_bits": golomb, "sent_bytes": sent // 8,
            "ratio_golomb": dense_bits / golomb if golomb else 0.0,
            "ratio_sent": dense_bits / sent if sent else 0.0, "steps": len(rows)}


def run_training(cfg: TrainConfig, timeout: float | None = None) -> dict[str, Any]:
    """Spawn the workers, wait (at most ``timeout`` s), return rank 0's report + checks.

    Raises :class:`DnnzipError` if a worker fails or the run does not finish in time (the
    remaining workers are killed).
    """
    cfg.validate()
    timeout = timeout if timeout is not None else max(120.0, cfg.timeout * 3)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="dnnzip-train-") as out_dir:
        ctx = mp.spawn(_worker, args=(asdict(cfg), port, out_dir), nprocs=cfg.workers,
                       join=False)
        deadline = time.monotonic() + timeout
        try:
            while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
                if time.monotonic() >= deadline:
                    raise DnnzipError(f"training did not finish within {timeout:.0f} s")
        except mp.ProcessRaisedException as exc:
            raise DnnzipError(f"a worker failed: {str(exc).strip().splitlines()[-1]}") from exc
        except mp.ProcessExitedException as exc:
            raise DnnzipError(f"a worker exited with code {exc.exit_code}") from exc
        finally:
            for proc in ctx.processes:
                if proc.is_alive():
                    proc.kill()
                    proc.join(5)
        results = []
        for r in range(cfg.workers):
            with open(os.path.join(out_dir, f"rank{r}.json")) as f:
                results.append(json.load(f))
    report = dict(results[0])
    report["accuracy_per_rank"] = [r["accuracy"] for r in results]
    report["max_replica_diff"] = max(r["max_replica_diff"] for r in results)
    report["config"] = asdict(cfg)
    return report
