"""Periodic averager for communication delay n > 1: local SGD with SBC (the faithful SBC).

    averager = SBCAverager(model, p=0.001, delay=10)
    for batch in data:
        loss(model(batch)).backward(); optimizer.step(); optimizer.zero_grad()
        averager.step()                      # every n-th call: one compressed exchange

Every worker trains its own replica; every ``delay`` steps, per parameter:
ΔW = W_local − W (W = the last common model), A ← A + ΔW, message = SBC(A, p),
A ← A − message, all-gather, W ← W + mean of the messages, W_local ← W.
Upstream cost per sync is k·b̄ + 32 bits per tensor instead of 32·N per step, so the
compression is about 32·n / (p·b̄) (×3 947 at n = 10, p = 0.01).

The constructor checks that every worker runs the same configuration and model shapes and
broadcasts rank 0's parameters, so all replicas start equal; after each sync they are bitwise
equal (every worker applies the same decoded bytes in the same order). Buffers (e.g.
BatchNorm statistics) are not touched. NaN/Inf in a local model: ``"raise"`` (default)
raises :class:`NonFiniteUpdate` on every worker; ``"skip"`` drops that round's local
progress everywhere (all replicas return to W, residuals unchanged).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..codec import InvalidOption
from .comm import _wrap, handshake
from .engine import Exchanger
from .ledger import BitLedger

__all__ = ["SBCAverager"]


class SBCAverager:
    """Local SGD with compressed synchronisation every ``delay`` steps (see module doc)."""

    def __init__(
        self,
        model: nn.Module,
        p: float = 0.01,
        *,
        delay: int = 10,
        method: str = "sbc",
        process_group=None,
        wire: str = "golomb",
        nonfinite: str = "raise",
        min_compress_numel: int = 0,
        ledger: BitLedger | None = None,
        selection: str = "auto",
        residual_dtype: torch.dtype = torch.float64,
    ):
        if isinstance(delay, bool) or int(delay) != delay or int(delay) < 1:
            raise InvalidOption(f"delay must be a positive integer, got {delay!r}")
        if int(min_compress_numel) < 0:
            raise InvalidOption(f"min_compress_numel must be >= 0, got {min_compress_numel}")
        self.model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) \
            else model
        self.delay = int(delay)
        self.min_compress_numel = int(min_compress_numel)
        self.process_group = process_group
        self.exchanger = Exchanger(method, p, wire=wire, nonfinite=nonfinite,
                                   group=process_group, ledger=ledger, selection=selection,
                                   residual_dtype=residual_dtype)
        self.ledger = self.exchanger.ledger
        self.names = [n for n, prm in self.model.named_parameters()]
        self.params = [prm for _, prm in self.model.named_parameters()]
        self.numel = sum(prm.numel() for prm in self.params)
        self.local_step = 0
        self.syncs = 0
        sent = handshake(self.config(), process_group)
        self.ledger.record(0, sent_bytes=sent)
        with torch.no_grad():
            try:
                for prm in self.params:
                    dist.broadcast(prm.data, src=_global_rank0(process_group),
                                   group=process_group)
            except Exception as exc:  # noqa: BLE001
                raise _wrap("initial parameter broadcast", exc) from exc
        self.global_params = [prm.detach().clone() for prm in self.params]

    @property
    def p(self) -> float:
        return self.exchanger.p

    @property
    def residuals(self):
        return self.exchanger.residual

    def config(self) -> dict[str, Any]:
        return {**self.exchanger.config(), "delay": self.delay,
                "min_compress_numel": self.min_compress_numel,
                "params": {n: list(prm.shape) for n, prm in zip(self.names, self.params,
                                                                 strict=True)}}

    def step(self) -> bool:
        """Call after ``optimizer.step()``; synchronises every ``delay`` calls (returns True)."""
        self.ledger.record(self.local_step, dense_bits=32 * self.numel)
        self.local_step += 1
        if self.local_step % self.delay == 0:
            self.sync()
            return True
        return False

    @torch.no_grad()
    def sync(self) -> bool:
        """One compressed exchange now (all workers must call it together).

        Returns False when the round was skipped (a worker had NaN/Inf, nonfinite="skip").
        """
        updates = [(prm.detach().double() - g.double()).reshape(-1)
                   for prm, g in zip(self.params, self.global_params, strict=True)]
        compress = [u.numel() >= max(self.min_compress_numel, 1) for u in updates]
        device = self.params[0].device if self.params else "cpu"
        means, _ = self.exchanger.run(self.local_step - 1, self.names, updates, compress,
                                      device=device)
        if means is not None:
            for g, m in zip(self.global_params, means, strict=True):
                g.add_(m.view_as(g).to(g.dtype))
        for prm, g in zip(self.params, self.global_params, strict=True):
            prm.copy_(g)
        self.syncs += 1
        return means is not None

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.config(),
            "local_step": self.local_step,
            "syncs": self.syncs,
            "global_params": [g.detach().cpu().clone() for g in self.global_params],
            "residuals": self.exchanger.residual.state_dict(),
            "ledger": self.ledger.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("config") != self.config():
            raise InvalidOption(
                f"checkpoint was made with {state.get('config')!r}, this averager is "
                f"{self.config()!r}"
            )
        self.local_step = int(state["local_step"])
        self.syncs = int(state["syncs"])
        with torch.no_grad():
            for g, s in zip(self.global_params, state["global_params"], strict=True):
                g.copy_(s)
        self.exchanger.residual.load_state_dict(state["residuals"])
        self.ledger.load_state_dict(state["ledger"])


def _global_rank0(group) -> int:
    if group is None:
        return 0
    return dist.get_global_rank(group, 0)
