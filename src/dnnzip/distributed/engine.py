"""One exchange round shared by the DDP hook and the periodic averager.

Given named flat updates, every worker: checks them for NaN/Inf; adds the compressed ones to
its residual and compresses them (small ones stay dense); encodes one packet; all-gathers the
packets; decodes *every* packet, its own included, and sums them in rank order. Every worker
therefore computes the mean from the same bytes in the same order, so replicas stay bitwise
identical. The residual gives up what was sent only after the exchange succeeded, so a
skipped round loses nothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..codec import InvalidOption
from .comm import STATUS_NONFINITE, STATUS_OK, exchange_bytes, exchange_words
from .core import (
    Message,
    NonFiniteUpdate,
    ResidualMemory,
    _subtract,
    all_finite,
    dense,
    make_compressor,
)
from .ledger import BitLedger
from .wire import PacketCodec, Slot

__all__ = ["Exchanger", "NONFINITE_MODES", "WIRES"]

WIRES = ("golomb", "padded")
NONFINITE_MODES = ("raise", "skip")


class Exchanger:
    """Compress → all-gather → decode → mean, with ledger accounting."""

    def __init__(
        self,
        method: str,
        p: float,
        *,
        wire: str = "golomb",
        nonfinite: str = "raise",
        group=None,
        ledger: BitLedger | None = None,
        selection: str = "auto",
        residual_dtype: torch.dtype = torch.float64,
    ):
        if wire not in WIRES:
            raise InvalidOption(f"unknown wire format {wire!r} (known: {', '.join(WIRES)})")
        if nonfinite not in NONFINITE_MODES:
            raise InvalidOption(f"nonfinite must be 'raise' or 'skip', got {nonfinite!r}")
        self.compressor = make_compressor(method, p, selection)
        self.method = method
        self.p = self.compressor.p
        self.wire = wire
        self.nonfinite = nonfinite
        self.group = group
        self.ledger = ledger if ledger is not None else BitLedger()
        if residual_dtype not in (torch.float64, torch.float32):
            raise InvalidOption(f"residual_dtype must be float64 or float32, got {residual_dtype}")
        self.residual = ResidualMemory(residual_dtype)
        self._codecs: dict[tuple[Slot, ...], PacketCodec] = {}
        self.timings = {"compress": 0.0, "code": 0.0, "calls": 0}

    def config(self) -> dict[str, Any]:
        return {"method": self.method, "p": self.p, "wire": self.wire,
                "nonfinite": self.nonfinite, "selection": self.compressor.selection,
                "residual_dtype": str(self.residual.dtype)}

    def _codec(self, slots: tuple[Slot, ...]) -> PacketCodec:
        codec = self._codecs.get(slots)
        if codec is None:
            codec = PacketCodec(slots, self.method, self.p)
            self._codecs[slots] = codec
        return codec

    def run(
        self,
        step: int,
        names: Sequence[str],
        updates: Sequence[torch.Tensor],
        compress: Sequence[bool],
        *,
        device: Any = "cpu",
        momentum: float = 0.0,
        momentum_buffers: dict[str, torch.Tensor] | None = None,
        out: Sequence[torch.Tensor] | None = None,
    ) -> tuple[list[torch.Tensor] | None, list[Message]]:
        """Exchange one round.

        ``updates`` are flat tensors; with ``momentum_buffers`` (name → u, created on first
        use) each update first goes through u ← m·u + update (DGC). ``out``: flat float32
        tensors to write the means into (else new ones). Returns (means, or None when the
        round was skipped because a worker had NaN/Inf; this worker's messages).
        """
        t0 = time.perf_counter()
        slots = tuple(
            Slot(n, int(u.numel()), bool(c) and self.method != "dense")
            for n, u, c in zip(names, updates, compress, strict=True)
        )
        codec = self._codec(slots)
        status = STATUS_OK if all(all_finite(u) for u in updates) else STATUS_NONFINITE
        messages: list[Message] = []
        if status == STATUS_OK:
            for s, u in zip(slots, updates, strict=True):
                buf = None
                if momentum_buffers is not None and momentum:
                    buf = momentum_buffers.get(s.name)
                    if buf is None:
                        buf = torch.zeros_like(u, dtype=torch.float32)
                        momentum_buffers[s.name] = buf
                if s.compressed:
                    messages.append(self.residual.accumulate_compress(
                        s.name, u, self.compressor, buf, momentum))
                else:
                    if buf is not None:
                        u = buf.mul_(momentum).add_(u)
                    messages.append(dense(u))
        t1 = time.perf_counter()
        world = torch.distributed.get_world_size(self.group)
        if self.wire == "golomb":
            payload, bits = codec.encode(messages) if status == STATUS_OK else (b"", 0)
            t2 = time.perf_counter()
            statuses, packets, sent = exchange_bytes(payload, status, self.group, device)
            t3 = time.perf_counter()
            ok = all(s == STATUS_OK for s in statuses)
            decoded = [codec.decode(pk) for pk in packets] if ok else []
        else:
            if status == STATUS_OK:
                words = codec.encode_padded(messages, status)
                bits = codec.exact_bits(messages)
            else:
                words = np.zeros(codec.padded_words, dtype=np.int32)
                words[0] = STATUS_NONFINITE
                bits = 0
            t2 = time.perf_counter()
            statuses, arrays, sent = exchange_words(words, self.group, device)
            t3 = time.perf_counter()
            ok = all(s == STATUS_OK for s in statuses)
            decoded = [codec.decode_padded(a) for a in arrays] if ok else []
        self.ledger.record(step, golomb_bits=bits, sent_bytes=sent)
        if not ok:
            bad = [r for r, s in enumerate(statuses) if s != STATUS_OK]
            if self.nonfinite == "raise":
                raise NonFiniteUpdate(
                    f"step {step}: update of worker(s) {bad} holds NaN or Inf; no replica was "
                    "changed (use nonfinite='skip' to skip such rounds)"
                )
            if status == STATUS_OK:  # our accumulators took the update: give the message back
                for s, m in zip(slots, messages, strict=True):
                    if s.compressed:
                        _subtract(self.residual.residual(s.name), m, sign=1)
            return None, []
        # every worker is fine: now the residual gives up what was sent
        for s, m in zip(slots, messages, strict=True):
            if s.compressed:
                _subtract(self.residual.residual(s.name), m)
        if out is None:
            out = [torch.zeros(s.numel, dtype=torch.float32, device=device) for s in slots]
        else:
            for o in out:
                o.zero_()
        for packet in decoded:  # rank order: identical sums on every worker
            for o, m in zip(out, packet, strict=True):
                m.add_to(o)
        for o in out:
            o.div_(world)
        t4 = time.perf_counter()
        self.timings["compress"] += t1 - t0
        self.timings["code"] += (t2 - t1) + (t4 - t3)
        self.timings["calls"] += 1
        return list(out), messages


