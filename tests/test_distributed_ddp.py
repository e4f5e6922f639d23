"""Real 2-process runs (torch.multiprocessing spawn, gloo on 127.0.0.1).

Each spawn costs seconds, so one spawn runs many scenarios and reports them in a JSON file;
a second one kills a worker. Every scenario checks that replicas end identical.
"""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from dnnzip.distributed import (
    CommunicationError,
    ConfigMismatch,
    NonFiniteUpdate,
    SBCAverager,
    SBCState,
    sbc_hook,
)
from dnnzip.distributed.demo import free_port

pytestmark = pytest.mark.distributed

WORLD = 2


def _init(rank: int, port: int, timeout: float) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD, timeout=timedelta(seconds=timeout))


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4))


def _data(rank: int, step: int):
    g = torch.Generator().manual_seed(1000 * rank + step)
    return torch.randn(16, 20, generator=g), torch.randint(0, 4, (16,), generator=g)


def _max_diff(model: nn.Module) -> float:
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    outs = [torch.empty_like(flat) for _ in range(WORLD)]
    dist.all_gather(outs, flat)
    return max(float((o - flat).abs().max()) for o in outs)


def _counting_hook(state, bucket):
    """sbc_hook, noting how many buckets DDP hands it per step."""
    state.buckets_seen = max(getattr(state, "buckets_seen", 0), bucket.index() + 1)
    return sbc_hook(state, bucket)


def _train_ddp(rank, steps, state=None, nan_at=-1, momentum=0.0, bucket_cap_mb=None):
    model = _model()
    ddp = (nn.parallel.DistributedDataParallel(model) if bucket_cap_mb is None else
           nn.parallel.DistributedDataParallel(model, bucket_cap_mb=bucket_cap_mb))
    if state is not None:
        state = state(model)
        ddp.register_comm_hook(state, _counting_hook)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum)
    for step in range(steps):
        x, y = _data(rank, step)
        if step == nan_at and rank == 1:
            x[0, 0] = float("nan")
        opt.zero_grad()
        nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()
    return model, state


def _scenarios(rank: int, port: int, out_dir: str) -> None:
    _init(rank, port, 60)
    res: dict = {}
    try:
        # 1. hook with top-k at p = 1 is lossless: must equal DDP's own all-reduce bit for bit
        ref, _ = _train_ddp(rank, 5)
        full, st = _train_ddp(rank, 5, lambda m: SBCState(m, 1.0, method="topk",
                                                           min_compress_numel=0))
        res["lossless_equal"] = all(torch.equal(a, b) for a, b in
                                    zip(ref.parameters(), full.parameters(), strict=True))
        res["lossless_diff"] = _max_diff(full)
        # several buckets (1 KB each), all exchanged in one round at the last one
        split, st = _train_ddp(rank, 5, lambda m: SBCState(m, 1.0, method="topk",
                                                            min_compress_numel=0),
                               bucket_cap_mb=0.001)
        res["lossless_buckets_equal"] = all(torch.equal(a, b) for a, b in
                                            zip(ref.parameters(), split.parameters(),
                                                strict=True))
        res["lossless_buckets_rounds"] = st.exchanger.timings["calls"]
        res["lossless_buckets_seen"] = st.buckets_seen
        model, st = _train_ddp(rank, 8, lambda m: SBCState(m, 0.05, momentum=0.9),
                               momentum=0.0, bucket_cap_mb=0.001)
        res["hook_buckets_diff"] = _max_diff(model)

        # 2. SBC hook, both wires, momentum correction; checkpoint round trip
        for wire in ("golomb", "padded"):
            model, st = _train_ddp(rank, 8, lambda m, w=wire: SBCState(
                m, 0.05, wire=w, momentum=0.9, min_compress_numel=100))
            res[f"hook_{wire}_diff"] = _max_diff(model)
            tot = st.ledger.totals()
            res[f"hook_{wire}_ratio"] = tot["ratio_golomb"]
            res[f"hook_{wire}_sent"] = tot["sent_bytes"]
            clone = SBCState(model, 0.05, wire=wire, momentum=0.9, min_compress_numel=100)
            clone.load_state_dict(st.state_dict())
            res[f"hook_{wire}_ckpt"] = clone.iter == st.iter and all(
                torch.equal(clone.residuals.residual(n), st.residuals.residual(n))
                for n in st.residuals.names()
            )
            try:
                SBCState(model, 0.02, wire=wire).load_state_dict(st.state_dict())
                res[f"hook_{wire}_ckpt_mismatch"] = "accepted"
            except ValueError:
                res[f"hook_{wire}_ckpt_mismatch"] = "rejected"

        # 3. NaN gradient on rank 1 after warm-up: every rank raises, nothing changes
        try:
            _train_ddp(rank, 4, lambda m: SBCState(m, 0.05), nan_at=3)
            res["nan_hook"] = "no error"
        except Exception as exc:  # noqa: BLE001 - DDP may wrap the hook's error
            res["nan_hook"] = type(exc).__name__ + ": " + str(exc)[:300]

        try:  # the same with two buckets: the pending one must not be left waiting
            _train_ddp(rank, 4, lambda m: SBCState(m, 0.05), nan_at=3, bucket_cap_mb=0.001)
            res["nan_hook_buckets"] = "no error"
        except Exception as exc:  # noqa: BLE001
            res["nan_hook_buckets"] = type(exc).__name__ + ": " + str(exc)[:300]

        # 4. averager (delay 3), STC; a NaN in rank 1's model with nonfinite="skip"
        model = _model()
        avg = SBCAverager(model, 0.05, delay=3, method="stc", nonfinite="skip")
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        synced = []
        for step in range(9):
            x, y = _data(rank, step)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            if step == 7 and rank == 1:
                with torch.no_grad():
                    next(model.parameters())[0, 0] = float("inf")
            synced.append(avg.step())
        res["avg_diff"] = _max_diff(model)
        res["avg_finite"] = all(bool(torch.isfinite(p).all()) for p in model.parameters())
        res["avg_synced"] = synced
        res["avg_ratio"] = avg.ledger.totals()["ratio_golomb"]

        # 5. averager with nonfinite="raise"
        model = _model()
        avg = SBCAverager(model, 0.05, delay=2)
        if rank == 0:
            with torch.no_grad():
                next(model.parameters())[1, 1] = float("nan")
        try:
            avg.step()
            avg.step()
            res["avg_nan"] = "no error"
        except NonFiniteUpdate:
            res["avg_nan"] = "NonFiniteUpdate"

        # 6. mismatched configuration between workers
        try:
            SBCAverager(_model(), 0.01 if rank == 0 else 0.02, delay=2)
            res["mismatch"] = "no error"
        except ConfigMismatch as exc:
            res["mismatch"] = "ConfigMismatch: " + str(exc)[:200]
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        res["error"] = repr(exc)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(res, f)
    dist.destroy_process_group()


def _dying(rank: int, port: int, out_dir: str) -> None:
    _init(rank, port, 20)
    model = _model()
    avg = SBCAverager(model, 0.05, delay=2)
    res: dict = {}
    t0 = time.monotonic()
    try:
        for step in range(6):
            if rank == 1 and step == 3:
                os._exit(7)  # the worker dies between two synchronisations
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.01 * torch.randn_like(p))
            t0 = time.monotonic()
            avg.step()
        res["error"] = None
    except CommunicationError as exc:
        res["error"] = "CommunicationError: " + str(exc)
    except Exception as exc:  # noqa: BLE001
        res["error"] = "other: " + repr(exc)
    res["seconds"] = time.monotonic() - t0
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(res, f)
    os._exit(0)  # the group is broken: do not wait in destroy_process_group


def _spawn(fn, out_dir, timeout: float) -> list[dict | None]:
    """Start WORLD workers and wait for every one of them to exit (never past ``timeout``).

    The processes are joined one by one rather than through ``ProcessContext.join``, which
    would terminate the survivors as soon as one worker fails — the dying-worker test needs
    the survivor to report.
    """
    port = free_port()
    ctx = mp.spawn(fn, args=(port, str(out_dir)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + timeout
    try:
        for proc in ctx.processes:
            proc.join(max(0.1, deadline - time.monotonic()))
        if any(proc.is_alive() for proc in ctx.processes):
            pytest.fail(f"workers did not finish within {timeout} s")
    finally:
        for proc in ctx.processes:
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    out = []
    for r in range(WORLD):
        path = os.path.join(out_dir, f"rank{r}.json")
        out.append(json.load(open(path)) if os.path.exists(path) else None)
    return out


def test_hook_and_averager_scenarios(tmp_path):
    results = _spawn(_scenarios, tmp_path, timeout=120)
    for rank, res in enumerate(results):
        assert res is not None and "error" not in res, (rank, res)
        assert res["lossless_equal"] is True
        assert res["lossless_buckets_equal"] is True
        assert res["lossless_buckets_seen"] >= 2, res["lossless_buckets_seen"]
        assert res["lossless_buckets_rounds"] == 5 - 2  # one round per step after warm-up
        for key in ("lossless_diff", "hook_golomb_diff", "hook_padded_diff", "avg_diff",
                    "hook_buckets_diff"):
            assert res[key] == 0.0, (key, res[key])
        for wire in ("golomb", "padded"):
            assert res[f"hook_{wire}_ratio"] > 2.0
            assert res[f"hook_{wire}_ckpt"] is True
            assert res[f"hook_{wire}_ckpt_mismatch"] == "rejected"
        assert results[0]["hook_padded_sent"] > results[0]["hook_golomb_sent"]
        for key in ("nan_hook", "nan_hook_buckets"):
            assert "NonFiniteUpdate" in res[key] or "NaN" in res[key], res[key]
        assert res["avg_finite"] is True
        assert res["avg_synced"] == [False, False, True, False, False, True, False, False, True]
        assert res["avg_ratio"] > 2.0
        assert res["avg_nan"] == "NonFiniteUpdate"
        assert res["mismatch"].startswith("ConfigMismatch") and "0.02" in res["mismatch"]


def test_dying_worker_gives_clear_error(tmp_path):
    results = _spawn(_dying, tmp_path, timeout=60)
    survivor = results[0]
    assert survivor is not None
    assert survivor["error"] is not None and survivor["error"].startswith("CommunicationError")
    assert "worker died" in survivor["error"]
    assert survivor["seconds"] < 25  # within the process group's 20 s timeout (+ slack)
