"""DDP communication hook for Sparse Binary Compression (n = 1), PowerSGD-hook style.

    state = SBCState(model, p=0.01)                 # model: the module (or its DDP wrapper)
    ddp.register_comm_hook(state, sbc_hook)

Per bucket, per tensor: gradient g (or, with momentum correction, u ← m·u + g) is added to
the residual A of that parameter; SBC(A, p) is sent; A keeps the rest. Tensors smaller than
``min_compress_numel`` (biases, norms) travel dense. The first ``warmup_steps`` steps (at
least 2: DDP rebuilds its buckets after the first iteration) are plain dense all-reduce.
Packets are all-gathered (Golomb bytes, or padded fixed-k), every worker decodes all of them
in rank order and writes the mean into the bucket, so replicas stay identical.

One exchange round per step, not per bucket: the hook returns a pending future for every
bucket but the last and, at the last, compresses and exchanges all of them together (DDP
waits for every bucket's future only at the end of backward). A round has a fixed cost —
two all-gathers, packet coding, a few dozen compiled calls — which DDP's small first bucket
(1 MB by default) would otherwise pay again for a few percent of the parameters.

Momentum correction (DGC): with ``momentum=m`` the hook keeps u per parameter, compresses the
accumulated u instead of g, and zeroes u where a position was sent (momentum factor masking);
then use the optimizer *without* momentum, since the hook applied it.

NaN/Inf gradients: with ``nonfinite="raise"`` (default) every worker raises
:class:`NonFiniteUpdate` from ``backward()`` and no replica or residual changes; with
``"skip"`` every worker gets a zero gradient for that bucket (the optimizer step still
applies weight decay/momentum identically everywhere, so replicas stay equal).
"""

import time
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..codec import InvalidOption
from .comm import _wrap, handshake
from .core import NonFiniteUpdate
from .engine import Exchanger
from .ledger import BitLedger

__all__ = ["SBCState", "sbc_hook"]


class SBCState:
    """State of :func:`sbc_hook`: configuration, residuals, momentum, step and ledger."""

    def __init__(
        self,
        model: nn.Module,
        p: float = 0.01,
        *,
        method: str = "sbc",
        process_group=None,
        warmup_steps: int = 2,
        min_compress_numel: int = 1024,
        momentum: float = 0.0,
        wire: str = "golomb",
        nonfinite: str = "raise",
        ledger: BitLedger | None = None,
        selection: str = "auto",
        residual_dtype: torch.dtype = torch.float64,
    ):
        if int(warmup_steps) < 2:
            raise InvalidOption(
                f"warmup_steps must be >= 2 (DDP rebuilds buckets after step 1), got {warmup_steps}"
            )
        if not 0.0 <= float(momentum) < 1.0:
            raise InvalidOption(f"momentum must lie in [0, 1), got {momentum}")
        if int(min_compress_numel) < 0:
            raise InvalidOption(f"min_compress_numel must be >= 0, got {min_compress_numel}")
        self.process_group = process_group
        self.warmup_steps = int(warmup_steps)
        self.min_compress_numel = int(min_compress_numel)
        self.momentum = float(momentum)
        self.exchanger = Exchanger(method, p, wire=wire, nonfinite=nonfinite,
                                   group=process_group, ledger=ledger, selection=selection,
                                   residual_dtype=residual_dtype)
        self.ledger = self.exchanger.ledger
        inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        self._names = {id(prm): name for name, prm in inner.named_parameters()}
        self._shapes = {name: list(prm.shape) for name, prm in inner.named_parameters()}
        self.momentum_buffers: dict[str, torch.Tensor] = {}
        self.iter = 0
        self._handshaken = False
        #: buckets of this step waiting for the last one: (buffer, names, views, future)
        self._pending: list[tuple[torch.Tensor, list[str], list[torch.Tensor],
                                  torch.futures.Future]] = []

    # public read-only views ------------------------------------------------------------------
    @property
    def p(self) -> float:
        return self.exchanger.p

    @property
    def method(self) -> str:
        return self.exchanger.method

    @property
    def residuals(self):
        return self.exchanger.residual

    def config(self) -> dict[str, Any]:
        return {**self.exchanger.config(), "warmup_steps": self.warmup_steps,
                "min_compress_numel": self.min_compress_numel, "momentum": self.momentum,
                "params": self._shapes}

    # checkpointing ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.config(),
            "iter": self.iter,
            "residuals": self.exchanger.residual.state_dict(),
            "momentum": {k: v.detach().cpu().clone() for k, v in self.momentum_buffers.items()},
            "ledger": self.ledger.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("config") != self.config():
            raise InvalidOption(
                f"checkpoint was made with {state.get('config')!r}, this state is {self.config()!r}"
            )
        self.iter = int(state["iter"])
        self.exchanger.residual.load_state_dict(state["residuals"])
        self.momentum_buffers = {k: v.clone() for k, v in state["momentum"].items()}
        self.ledger.load_state_dict(state["ledger"])
        self._handshaken = False
        self._pending = []

    # helpers ---------------------------------------------------------------------------------
    def _name(self, prm: torch.Tensor) -> str:
        name = self._names.get(id(prm))
        if name is None:
            raise InvalidOption("bucket holds a parameter the SBCState model does not have")
        return name

    def _handshake(self) -> None:
        if not self._handshaken:
            sent = handshake(self.config(), self.process_group)
            self.ledger.record(self.iter, sent_bytes=sent)
            self._handshaken = True


def _completed(t: torch.Tensor) -> torch.futures.Future[torch.Tensor]:
    fut: torch.futures.Future = torch.futures.Future()
    fut.set_result(t)
    return fut


def sbc_hook(state: "SBCState", bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: SBC (or STC/top-k/dense) per tensor, mean via all-gather.

    (No ``from __future__ import annotations`` in this module: DDP checks these annotations.)
    """
    t0 = time.perf_counter()
    group = state.process_group
    buffer = bucket.buffer()
    step = state.iter
    if bucket.is_last():
        state.iter += 1
    state._handshake()
    n = buffer.numel()
    state.ledger.record(step, dense_bits=32 * n)
    if step < state.warmup_steps:
        try:
            dist.all_reduce(buffer, group=group)
        except Exception as exc:  # noqa: BLE001
            raise _wrap("dense warm-up all-reduce", exc) from exc
        state.ledger.record(step, golomb_bits=32 * n, sent_bytes=4 * n)
        buffer.div_(dist.get_world_size(group))
        if n and not bool(torch.isfinite(buffer).all()):  # the same sum on every worker
            if state.exchanger.nonfinite == "raise":
                raise NonFiniteUpdate(f"step {step}: a worker's gradient holds NaN or Inf")
            buffer.zero_()
        return _completed(buffer)

    params = bucket.parameters()
    names = [state._name(prm) for prm in params]
    # flat views of the bucket: the updates are read (compressed) before the means are
    # written back into the same memory
    views, at = [], 0
    for g in bucket.gradients():
        views.append(buffer[at : at + g.numel()])
        at += g.numel()
    if at != n:
        raise InvalidOption(f"bucket buffer has {n} elements, its gradients {at}")
    ex = state.exchanger
    if not bucket.is_last():  # exchanged with the last bucket of this step
        fut: torch.futures.Future = torch.futures.Future()
        state._pending.append((buffer, names, views, fut))
        _clock_outside(ex, step, time.perf_counter() - t0)
        return fut
    pending, state._pending = state._pending, []
    buffers = [p[0] for p in pending] + [buffer]
    names = [n for p in pending for n in p[1]] + names
    views = [v for p in pending for v in p[2]] + views
    compress = [v.numel() >= max(state.min_compress_numel, 1) for v in views]
    t1 = time.perf_counter()
    try:
        means, messages = ex.run(
            step, names, views, compress, device=buffer.device, momentum=state.momentum,
            momentum_buffers=state.momentum_buffers if state.momentum else None, out=views,
            flat_out=buffers)
    except BaseException as exc:
        for p in pending:  # no bucket of this step is left waiting
            p[3].set_exception(exc)
        raise
    t2 = time.perf_counter()
    if means is None:  # skipped round (nonfinite="skip")
        for b in buffers:
            b.zero_()
    elif state.momentum:
        for name, c, m in zip(names, compress, messages, strict=True):
            if c and m.positions.size:  # momentum factor masking: sent positions restart
                u = state.momentum_buffers[name]
                if u.device.type == "cpu":
                    u.numpy()[m.positions] = 0
                else:
                    u[torch.from_numpy(m.positions).to(u.device)] = 0
    for p in pending:
        p[3].set_result(p[0])
    # the hook's own work around the exchange (bucket views, momentum masking)
    _clock_outside(ex, step, (t1 - t0) + time.perf_counter() - t2)
    return _completed(buffer)


def _clock_outside(ex: Exchanger, step: int, seconds: float) -> None:
    """Count the hook's own seconds outside ``Exchanger.run`` into its clocks."""
    ex.timings["hook_outside"] = ex.timings.get("hook_outside", 0.0) + seconds
    ex.own_per_step[step] = ex.own_per_step.get(step, 0.0) + seconds
