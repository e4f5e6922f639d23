"""One exchange round shared by the DDP hook and the periodic averager.

Given named flat updates, every worker: checks them for NaN/Inf; adds the compressed ones to
its residual and compresses them (small ones stay dense); encodes one packet; all-gathers the
packets; decodes *every* packet, its own included, and sums them in rank order. Every worker
therefore computes the mean from the same bytes in the same order, so replicas stay bitwise
identical. The residual gives up what was sent only after the exchange succeeded, so a
skipped round loses nothing.

CPU fast path (float32 outputs laid out in one flat buffer, as a DDP bucket is): the fused
compress pass zeroes the update memory behind its read when that memory is also the output,
one compiled merge of all decoded packets (joint index space, increasing) writes each sent
position of the flat buffer once, O(world·k) — no pass over the whole bucket besides the
one compress pass. The result is bit for bit the one of the generic path: per position
0 + v₀ + v₁ + … in rank order (float32), then divided by the world size.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from numba import njit

from ..codec import InvalidOption
from .comm import STATUS_NONFINITE, STATUS_OK, exchange_bytes, exchange_words
from .core import (
    SAMPLED_MIN_NUMEL,
    Message,
    NonFiniteUpdate,
    ResidualMemory,
    _subtract,
    all_finite,
    dense,
    make_compressor,
)
from .ledger import BitLedger
from .wire import _EMPTY_F32, PacketCodec, RawPacket, Slot

__all__ = ["Exchanger", "NONFINITE_MODES", "WIRES"]

WIRES = ("golomb", "padded")
NONFINITE_MODES = ("raise", "skip")
_MODE = {"sbc": 0, "stc": 1, "topk": 2}
_EMPTY_BOOL = np.empty(0, dtype=np.bool_)


@njit(cache=True)
def _merge_mean(flat, positions, rank_start, offsets, starts, scales, negative, values, mode,
                world):
    """The mean of every worker's packet, written straight into the (zero) flat buffer.

    ``positions``: all workers' increasing position lists (joint index space; slot j owns
    [offsets[j], offsets[j+1])), worker r's at [rank_start[r], rank_start[r+1]). One merge
    walks the union in increasing order; at each position the values of the workers that
    sent it are summed in rank order, 0 + v₀ + v₁ + … (float32), then divided by ``world``
    and stored once at starts[j] + p − offsets[j]. value: sbc → scales[r, j],
    stc → ±scales[r, j] (negative), topk → values. O(world · |union|), every output
    position touched once, in increasing order."""
    vals = values if mode == 2 else _entry_values(positions, rank_start, offsets, scales,
                                                  negative, mode == 1)
    w = rank_start.size - 1
    if w == 2:
        _merge_pair(flat, positions, rank_start, offsets, starts, vals, world)
        return
    head = rank_start[:w].copy()
    last = np.iinfo(np.int64).max
    j = 0
    while True:
        p = last
        for r in range(w):
            if head[r] < rank_start[r + 1] and positions[head[r]] < p:
                p = positions[head[r]]
        if p == last:
            break
        while p >= offsets[j + 1]:
            j += 1
        s = np.float32(0.0)
        for r in range(w):
            h = head[r]
            if h < rank_start[r + 1] and positions[h] == p:
                s = np.float32(s + vals[h])
                head[r] = h + 1
        flat[starts[j] + p - offsets[j]] = s / world


@njit(cache=True)
def _entry_values(positions, rank_start, offsets, scales, negative, signed):
    """The float32 value of every packet entry: scales[r, j] of its worker r and slot j,
    negated where ``negative`` with ``signed`` (stc). One pass; the merge then reads values
    without per-entry method branches, which made it several times slower."""
    out = np.empty(positions.size, dtype=np.float32)
    for r in range(rank_start.size - 1):
        j = 0
        for h in range(rank_start[r], rank_start[r + 1]):
            while positions[h] >= offsets[j + 1]:
                j += 1
            out[h] = scales[r, j]
        if signed:
            for h in range(rank_start[r], rank_start[r + 1]):
                if negative[h]:
                    out[h] = -out[h]
    return out


@njit(cache=True)
def _merge_pair(flat, positions, rank_start, offsets, starts, vals, world):
    """``_merge_mean`` for two workers, the same sums in the same order: which worker sent
    the next position is data, so instead of branching on it (a misprediction at about
    every other position) both heads advance by their match flags."""
    i = 0
    ie = rank_start[1]
    h = rank_start[1]
    he = rank_start[2]
    last = np.iinfo(np.int64).max
    j = 0
    while i < ie or h < he:
        a = positions[i] if i < ie else last
        b = positions[h] if h < he else last
        p = min(a, b)
        while p >= offsets[j + 1]:
            j += 1
        ta = a == p
        tb = b == p
        s = np.float32(0.0)
        if ta:
            s = np.float32(s + vals[i])
        if tb:
            s = np.float32(s + vals[h])
        flat[starts[j] + p - offsets[j]] = s / world
        i += ta
        h += tb


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
        self._layouts: dict[tuple, tuple[np.ndarray, list, list]] = {}
        self._world: int | None = None
        self._rank = 0
        self.timings = _new_timings()
        #: step → this worker's own seconds in that step's exchanges (all but the collectives)
        self.own_per_step: dict[int, float] = {}
        self.warm_up()

    def warm_up(self) -> None:
        """Run the whole compress → encode → decode → average path once on a dummy layout,
        with and without momentum, without any collective: numba loads each compiled kernel
        from its cache (or compiles it) on its first call — about a second in all for a
        fresh process — and that one-time cost belongs to start-up, not to a training step."""
        if self.method == "dense":
            return
        n = SAMPLED_MIN_NUMEL
        gen = torch.Generator().manual_seed(0)
        slots = (Slot("w", n, True), Slot("s", 8, True), Slot("b", 8, False))
        codec = PacketCodec(slots, self.method, self.p)
        comp = make_compressor(self.method, self.p, self.compressor.selection)
        for momentum in (0.0, 0.9):
            res = ResidualMemory(self.residual.dtype)
            flat = torch.randn(n + 16, generator=gen)
            ups = _split(flat, slots)
            bufs = [torch.zeros(s.numel) for s in slots] if momentum else [None] * 3
            msgs = [res.accumulate_compress(s.name, u, comp, b, momentum, consume=True)
                    for s, u, b in zip(slots[:2], ups, bufs, strict=False)]
            msgs.append(dense(ups[2]))
            all_finite(ups[0])
            for s, m in zip(slots[:2], msgs, strict=False):
                _subtract(res.residual(s.name), m)
            raw = codec.decode_raw(codec.encode(msgs)[0])
            codec.decode_padded_raw(codec.encode_padded(msgs))
            flat.zero_()
            self._average_flat(codec, slots, [raw], [flat], 1)

    def reset_timings(self) -> None:
        """Zero the per-phase clocks (see ``timings``, ``own_per_step``)."""
        self.timings = _new_timings()
        self.own_per_step = {}

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

    def _layout(self, codec: PacketCodec, slots: tuple[Slot, ...], sizes: tuple[int, ...]):
        """Where the slots lie in the flat output buffers of ``sizes`` elements (the slots
        fill them in order): per compressed slot its first element in its buffer
        (joint-space offsets come from the codec); per buffer (index, first and end
        compressed slot); per dense slot (buffer, start, numel)."""
        key = (slots, sizes)
        lay = self._layouts.get(key)
        if lay is None:
            first = np.concatenate([[0], np.cumsum([s.numel for s in slots])]).astype(np.int64)
            base = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
            # the buffer of each slot: the last buffer starting at or before it (empty slots
            # at a boundary belong to the next buffer; they hold no element either way)
            buf_of = np.searchsorted(base, first[:-1], side="right") - 1
            comp = np.array(codec.compressed_index, dtype=np.int64)
            starts = (first[comp] - base[buf_of[comp]]) if comp.size else np.empty(0, np.int64)
            ranges = []
            for b in range(len(sizes)):
                inside = np.flatnonzero(buf_of[comp] == b) if comp.size else comp
                if inside.size:
                    ranges.append((b, int(inside[0]), int(inside[-1]) + 1))
            dense_at = [(int(buf_of[i]), int(first[i] - base[buf_of[i]]), slots[i].numel)
                        for i in codec.dense_index]
            lay = (starts.astype(np.int64), ranges, dense_at)
            self._layouts[key] = lay
        return lay

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
        flat_out: torch.Tensor | Sequence[torch.Tensor] | None = None,
    ) -> tuple[list[torch.Tensor] | None, list[Message]]:
        """Exchange one round.

        ``updates`` are flat tensors; with ``momentum_buffers`` (name → u, created on first
        use) each update first goes through u ← m·u + update (DGC). ``out``: flat float32
        tensors to write the means into (else new ones); ``flat_out``: one tensor of which
        ``out`` are the consecutive slices (a DDP bucket), or several such tensors that
        ``out`` fills in order (several buckets in one round) — enables the compiled
        averaging.
        An update that is its own output is consumed (zeroed) while it is compressed.
        Returns (means, or None when the round was skipped because a worker had NaN/Inf;
        this worker's messages).
        """
        t0 = time.perf_counter()
        tm = self.timings
        c0 = tm["collective"]
        slots = tuple(
            Slot(n, int(u.numel()), bool(c) and self.method != "dense")
            for n, u, c in zip(names, updates, compress, strict=True)
        )
        codec = self._codec(slots)
        if self._world is None:  # a process group's size and this worker's rank never change
            self._world = torch.distributed.get_world_size(self.group)
            self._rank = torch.distributed.get_rank(self.group)
        world = self._world
        if out is None:
            flat = torch.zeros(sum(s.numel for s in slots), dtype=torch.float32, device=device)
            out = _split(flat, slots)
            flats = [flat]
            zeroed = [True] * len(slots)
        else:
            out = list(out)
            flats = ([] if flat_out is None else [flat_out]
                     if isinstance(flat_out, torch.Tensor) else list(flat_out))
            if flats and (sum(f.numel() for f in flats) != sum(s.numel for s in slots)
                          or any(f.dim() != 1 for f in flats)):
                raise InvalidOption("flat_out must be the 1-D buffer(s) that out fills in order")
            zeroed = [False] * len(slots)
        fast = (bool(flats) and self.method != "dense"
                and all(f.device.type == "cpu" and f.dtype == torch.float32
                        and f.is_contiguous() for f in flats))
        # updates that are their own outputs (DDP buckets) are checked in one pass per flat
        # buffer instead of one per tensor
        own = [fast and _same_memory(u, o) for u, o in zip(updates, out, strict=True)]
        finite = (all(all_finite(f) for f in flats) if own and all(own)
                  else all(all_finite(u) for u in updates))
        status = STATUS_OK if finite else STATUS_NONFINITE
        messages: list[Message] = []
        if status == STATUS_OK:
            for j, (s, u) in enumerate(zip(slots, updates, strict=True)):
                buf = None
                if momentum_buffers is not None and momentum:
                    buf = momentum_buffers.get(s.name)
                    if buf is None:
                        buf = torch.zeros_like(u, dtype=torch.float32)
                        momentum_buffers[s.name] = buf
                if s.compressed:
                    consume = own[j] and not zeroed[j]
                    messages.append(self.residual.accumulate_compress(
                        s.name, u, self.compressor, buf, momentum, consume=consume))
                    zeroed[j] = zeroed[j] or consume
                else:
                    if buf is not None:
                        u = buf.mul_(momentum).add_(u)
                    messages.append(dense(u, check=False))  # checked above
            if fast:  # every update has been read: the outputs may start at zero now
                for j, o in enumerate(out):
                    if not zeroed[j]:
                        o.zero_()
        t1 = time.perf_counter()
        if self.wire == "golomb":
            payload, bits, own = (codec.encode_with_raw(messages) if status == STATUS_OK
                                  else (b"", 0, None))
            t2 = time.perf_counter()
            statuses, packets, sent = exchange_bytes(payload, status, self.group, device, tm)
            t3 = time.perf_counter()
            ok = all(s == STATUS_OK for s in statuses)
            raws = self._raws(own, packets, codec.decode_raw) if ok else []
        else:
            if status == STATUS_OK:
                words = codec.encode_padded(messages, status)
                bits = codec.exact_bits(messages)
            else:
                words = np.zeros(codec.padded_words, dtype=np.int32)
                words[0] = STATUS_NONFINITE
                bits = 0
            t2 = time.perf_counter()
            statuses, arrays, sent = exchange_words(words, self.group, device, tm)
            t3 = time.perf_counter()
            ok = all(s == STATUS_OK for s in statuses)
            raws = (self._raws(codec.raw_of(messages), arrays, codec.decode_padded_raw)
                    if ok else [])
        self.ledger.record(step, golomb_bits=bits, sent_bytes=sent)
        if not ok:
            bad = [r for r, s in enumerate(statuses) if s != STATUS_OK]
            # nothing was subtracted yet: the residuals keep this round's whole update
            self._clock(step, c0, t0, t1, t2, t3, time.perf_counter())
            if self.nonfinite == "raise":
                raise NonFiniteUpdate(
                    f"step {step}: update of worker(s) {bad} holds NaN or Inf; no replica was "
                    "changed (use nonfinite='skip' to skip such rounds)"
                )
            return None, []
        # every worker is fine: now the residual gives up what was sent
        for s, m in zip(slots, messages, strict=True):
            if s.compressed:
                _subtract(self.residual.residual(s.name), m)
        if fast:
            self._average_flat(codec, slots, raws, flats, world)
        else:
            for o in out:
                o.zero_()
            for raw in raws:  # rank order: identical sums on every worker
                for o, m in zip(out, codec._assemble(*raw), strict=True):
                    m.add_to(o)
            for o in out:
                o.div_(world)
        self._clock(step, c0, t0, t1, t2, t3, time.perf_counter())
        return out, messages

    def _raws(self, own: RawPacket, packets: Sequence[Any], decode) -> list[RawPacket]:
        """Every worker's packet, validated and in rank order: the peers' decoded, this
        worker's ``own`` taken from its messages (``PacketCodec.raw_of``: the same numbers
        its bytes carry, one decode less per step)."""
        return [own if r == self._rank else decode(pk) for r, pk in enumerate(packets)]

    def _average_flat(self, codec: PacketCodec, slots: tuple[Slot, ...],
                      raws: list[RawPacket], flats: list[torch.Tensor], world: int) -> None:
        """The flat buffers (zero) ← mean of the packets: per buffer one compiled merge of
        its compressed slots (see ``_merge_mean``; a buffer's slots are a contiguous range
        of the joint index space, so each packet's part is one slice), rank-order sums then
        one division for the dense ones."""
        starts, ranges, dense_at = self._layout(codec, slots, tuple(f.numel() for f in flats))
        arrays = [f.numpy() for f in flats]
        if ranges and any(raw.positions.size for raw in raws):
            scales = np.stack([codec.scale_per_compressed(raw.scales) if codec.scaled
                               else np.zeros(len(codec.compressed_index), np.float32)
                               for raw in raws])
            for b, lo, hi in ranges:
                parts = [(int(raw.bounds[lo]), int(raw.bounds[hi])) for raw in raws]
                counts = [e - s for s, e in parts]
                if not any(counts):
                    continue
                rank_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
                positions = _cut(raws, "positions", parts).astype(np.int64, copy=False)
                negative = (_cut(raws, "negative", parts) if self.method == "stc"
                            else _EMPTY_BOOL)
                values = (_cut(raws, "values", parts).astype(np.float32, copy=False)
                          if self.method == "topk" else _EMPTY_F32)
                _merge_mean(arrays[b], positions, rank_start, codec.offsets[lo : hi + 1],
                            starts[lo:hi], np.ascontiguousarray(scales[:, lo:hi]), negative,
                            values, _MODE[self.method], np.float32(world))
        at = 0
        for b, start, n in dense_at:
            seg = arrays[b][start : start + n]
            for raw in raws:  # rank order: identical sums on every worker
                seg += raw.dense_vals[at : at + n]
            np.divide(seg, np.float32(world), out=seg)
            at += n

    def _clock(self, step: int, c0: float, t0: float, t1: float, t2: float, t3: float,
               t4: float) -> None:
        tm = self.timings
        own = (t4 - t0) - (tm["collective"] - c0)
        self.own_per_step[step] = self.own_per_step.get(step, 0.0) + own
        tm["compress"] += t1 - t0
        tm["encode"] += t2 - t1
        tm["exchange"] += t3 - t2
        tm["decode_average"] += t4 - t3
        tm["total"] += t4 - t0
        tm["calls"] += 1
        tm["fallbacks"] = self.compressor.fallbacks
        tm["hint_misses"] = self.compressor.hint_misses


def _new_timings() -> dict[str, float]:
    """Seconds per phase, summed over calls. ``exchange`` holds ``collective`` (the time
    inside the all-gathers: waiting for peers + transfer); everything else is this worker's
    own compress + code work: ``total − collective``."""
    return {"compress": 0.0, "encode": 0.0, "exchange": 0.0, "collective": 0.0,
            "decode_average": 0.0, "total": 0.0, "calls": 0, "fallbacks": 0,
            "hint_misses": 0}


def _cut(raws: Sequence[RawPacket], field: str, parts: Sequence[tuple[int, int]]
         ) -> np.ndarray:
    """Entries parts[r] of packet r's ``field``, concatenated in rank order."""
    return np.concatenate([getattr(raw, field)[s:e]
                           for raw, (s, e) in zip(raws, parts, strict=True)])


def _split(flat: torch.Tensor, slots: Sequence[Slot]) -> list[torch.Tensor]:
    views, at = [], 0
    for s in slots:
        views.append(flat[at : at + s.numel])
        at += s.numel
    return views


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """a and b are the same float32 elements (the update is its own output)."""
    return (a.device == b.device and a.dtype == b.dtype == torch.float32
            and a.numel() == b.numel() and a.data_ptr() == b.data_ptr()
            and a.is_contiguous() and b.is_contiguous())
