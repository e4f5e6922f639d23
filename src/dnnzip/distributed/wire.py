"""Wire formats: one worker's messages for a list of tensors ("slots") as one packet.

Both sides know the layout (slot sizes, which slots are compressed, the method and p), so a
packet carries only what varies. Two forms, as SPEC §4 allows:

**Golomb bytes** (variable length; the length is exchanged first)::

    u32 C                       total positions of all compressed slots
    f32 scale × S               sbc: signed mean, stc: μ — one per non-empty compressed slot
    f32 × D                     the dense slots (small tensors), concatenated
    f32 × C                     topk only: the values
    ⌈C/8⌉ bytes                 stc only: sign bits (1 = negative), MSB first
    Golomb–Rice bytes           all positions in one index space (slot j's positions are
                                offset by the sizes of the compressed slots before it), b = b*(p)

One Golomb stream for the whole packet: one byte of padding instead of one per tensor, and no
per-tensor counts — a position's slot is found from the offsets. Message cost:
32 + 32·S + 32·D + Σ(gap bits) (+ C for stc, + 32·C for topk): the SPEC's k·b̄ + 32 per tensor.

**Padded fixed-k** (int32 words, the same size on every worker, one all-gather)::

    status, then per compressed slot k_t = ⌈p·numel_t⌉ codes (pos+1)·sign (0 = unused),
    scales (f32 bits) × S, topk values × Σk_t, dense slots × D

Decoders never trust the payload: any inconsistency raises ``CorruptPayload``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numba import njit

from ..codec import CorruptPayload, InvalidOption
from ..coding.golomb import (
    decode_positions,
    encode_positions,
    optimal_rice_parameter,
    position_bits,
)
from .core import METHODS, Message, check_density, num_selected

__all__ = ["PacketCodec", "RawPacket", "Slot"]

_I32_MAX = (1 << 31) - 1


@dataclass(frozen=True)
class Slot:
    """One tensor of a packet: its name, size and whether it is compressed (else dense)."""

    name: str
    numel: int
    compressed: bool


class RawPacket(NamedTuple):
    """A decoded, validated packet before it is split per slot.

    ``positions``: increasing, in the joint index space of the compressed slots (slot j owns
    [offsets[j], offsets[j+1])); ``bounds[j]``: index of slot j's first position.
    """

    positions: np.ndarray
    scales: np.ndarray | None
    dense_vals: np.ndarray
    values: np.ndarray | None
    negative: np.ndarray | None
    bounds: np.ndarray


_EMPTY_F32 = np.empty(0, dtype=np.float32)


@njit(cache=True)
def _finite(arr):
    for x in arr:
        if not np.isfinite(x):
            return False
    return True


@njit(cache=True)
def _check_packet(positions, offsets, k, bounds, scales, dense_vals, values):
    """bounds[j] = first index of ``positions`` (increasing) at or beyond offsets[j]
    (``np.searchsorted``, by one merge). Returns −1 if the packet is sound, −2/−3/−4 for a
    non-finite scale / dense value / value, else the first slot with more than k[j]
    positions."""
    if not _finite(scales):
        return -2
    if not _finite(dense_vals):
        return -3
    if not _finite(values):
        return -4
    i = 0
    for j in range(offsets.size):
        while i < positions.size and positions[i] < offsets[j]:
            i += 1
        bounds[j] = i
    for j in range(k.size):
        if bounds[j + 1] - bounds[j] > k[j]:
            return j
    return -1


class PacketCodec:
    """Encode/decode the packet of one worker for a fixed layout (see module docstring)."""

    def __init__(self, slots: Sequence[Slot], method: str, p: float):
        if method not in METHODS:
            raise InvalidOption(f"unknown compression method {method!r}")
        self.method = method
        self.p = 1.0 if method == "dense" else check_density(p)
        self.slots = list(slots)
        if method == "dense":
            self.slots = [Slot(s.name, s.numel, False) for s in self.slots]
        self.b = optimal_rice_parameter(self.p)
        comp = [i for i, s in enumerate(self.slots) if s.compressed]
        self.compressed_index = comp
        self.dense_index = [i for i, s in enumerate(self.slots) if not s.compressed]
        sizes = np.array([self.slots[i].numel for i in comp], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.compressed_numel = int(self.offsets[-1])
        self.dense_numel = int(sum(self.slots[i].numel for i in self.dense_index))
        self.scaled = method in ("sbc", "stc")
        self.scaled_index = [i for i in comp if self.slots[i].numel > 0] if self.scaled else []
        self.k = [num_selected(self.slots[i].numel, self.p) for i in comp]
        self._k_array = np.array(self.k, dtype=np.int64)
        self.k_total = int(sum(self.k))
        where = {i: j for j, i in enumerate(comp)}
        self._scaled_in_compressed = np.array([where[i] for i in self.scaled_index], np.int64)

    # ---------------------------------------------------------------------------------------
    def _check(self, messages: Sequence[Message]) -> None:
        if len(messages) != len(self.slots):
            raise InvalidOption(f"{len(messages)} messages for {len(self.slots)} slots")
        for s, m in zip(self.slots, messages, strict=True):
            want = self.method if s.compressed else "dense"
            if m.method != want or m.numel != s.numel:
                raise InvalidOption(
                    f"slot {s.name!r}: message {m.method}/{m.numel} does not fit {want}/{s.numel}"
                )

    def _gather(self, messages: Sequence[Message]):
        comp = [messages[i] for i in self.compressed_index]
        pos = [m.positions + self.offsets[j] for j, m in enumerate(comp)]
        positions = np.concatenate(pos) if pos else np.empty(0, dtype=np.int64)
        dense = [messages[i].values for i in self.dense_index]
        dense_vals = (
            np.concatenate(dense).astype(np.float32) if dense else np.empty(0, np.float32)
        )
        scales = np.array([messages[i].scale for i in self.scaled_index], dtype=np.float32)
        return comp, positions, dense_vals, scales

    def _extras(self, comp: Sequence[Message]) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(top-k values as float32, stc signs as bool) of the compressed messages, in packet
        order; None where the method carries no such part."""
        if self.method == "topk":
            return (np.concatenate([m.values for m in comp]).astype(np.float32) if comp
                    else _EMPTY_F32), None
        if self.method == "stc":
            return None, (np.concatenate([m.negative for m in comp]).astype(bool) if comp
                          else np.empty(0, dtype=bool))
        return None, None

    def exact_bits(self, messages: Sequence[Message]) -> int:
        """Information bits of the Golomb packet before byte padding (the ledger's count)."""
        comp, positions, _, _ = self._gather(messages)
        c = positions.size
        bits = 32 * len(self.scaled_index) + 32 * self.dense_numel
        if self.method == "dense":
            return bits
        bits += 32 + position_bits(positions, self.b)
        if self.method == "topk":
            bits += 32 * c
        elif self.method == "stc":
            bits += c
        return bits

    # ---------------------------------------------------------------------------------------
    def encode(self, messages: Sequence[Message]) -> tuple[bytes, int]:
        """Golomb packet bytes and its exact bit count."""
        return self._encode(messages, False)[:2]

    def encode_with_raw(self, messages: Sequence[Message]) -> tuple[bytes, int, RawPacket]:
        """Golomb packet bytes, its exact bit count and its ``raw_of`` (a worker merges its
        own packet from that; one gathering of the messages serves both)."""
        return self._encode(messages, True)

    def _encode(self, messages: Sequence[Message], with_raw: bool):
        self._check(messages)
        comp, positions, dense_vals, scales = self._gather(messages)
        if self.method == "dense":
            return (dense_vals.tobytes(), 32 * self.dense_numel,
                    self._own_raw(positions, scales, dense_vals, None, None)
                    if with_raw else None)
        c = positions.size
        parts = [np.array([c], dtype="<u4").tobytes(), scales.astype("<f4").tobytes(),
                 dense_vals.astype("<f4").tobytes()]
        values, negative = self._extras(comp)
        if values is not None:
            parts.append(values.astype("<f4").tobytes())
        elif negative is not None:
            parts.append(np.packbits(negative).tobytes())
        golomb = encode_positions(positions, self.b)
        parts.append(golomb)
        bits = 32 + 32 * scales.size + 32 * self.dense_numel + position_bits(positions, self.b)
        bits += 32 * c if self.method == "topk" else (c if self.method == "stc" else 0)
        raw = (self._own_raw(positions, scales, dense_vals, values, negative) if with_raw
               else None)
        return b"".join(parts), bits, raw

    def raw_of(self, messages: Sequence[Message]) -> RawPacket:
        """What ``decode_raw`` returns for the packet of ``messages``, without encoding and
        decoding it: a worker merges its own packet from its messages. The same numbers
        the bytes carry (positions; float32 scales, dense values and top-k values; signs),
        so the merge is bit for bit the one of the decoded packet."""
        self._check(messages)
        comp, positions, dense_vals, scales = self._gather(messages)
        return self._own_raw(positions, scales, dense_vals, *self._extras(comp))

    def _own_raw(self, positions, scales, dense_vals, values, negative) -> RawPacket:
        """The raw packet of gathered messages (a dense packet carries no scales)."""
        if self.method == "dense":
            return self._validated(positions, _EMPTY_F32, dense_vals, None, None)
        return self._validated(positions, scales, dense_vals, values, negative)

    def decode(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Messages (one per slot) from a Golomb packet; raises CorruptPayload."""
        return self._assemble(*self.decode_raw(data))

    def decode_raw(self, data: bytes | bytearray | memoryview) -> RawPacket:
        """The validated contents of a Golomb packet, not yet split per slot: (positions in
        the joint index space, increasing; scales; dense values; topk values; stc signs)."""
        buf = memoryview(data).cast("B")
        if self.method == "dense":
            if len(buf) != 4 * self.dense_numel:
                raise CorruptPayload(
                    f"dense packet has {len(buf)} bytes, expected {4 * self.dense_numel}"
                )
            dense_vals = np.frombuffer(buf, dtype="<f4").astype(np.float32)
            return self._validated(np.empty(0, np.int64), np.empty(0, np.float32), dense_vals,
                                   None, None)
        head = 4 + 4 * len(self.scaled_index) + 4 * self.dense_numel
        if len(buf) < head:
            raise CorruptPayload(f"packet of {len(buf)} bytes is shorter than its {head}-byte head")
        c = int(np.frombuffer(buf[:4], dtype="<u4")[0])
        if c > self.k_total:
            raise CorruptPayload(f"packet claims {c} positions, at most {self.k_total} expected")
        at = 4
        scales = np.frombuffer(buf[at : at + 4 * len(self.scaled_index)], dtype="<f4")
        at += 4 * len(self.scaled_index)
        dense_vals = np.frombuffer(buf[at : at + 4 * self.dense_numel], dtype="<f4")
        at += 4 * self.dense_numel
        values = negative = None
        if self.method == "topk":
            if len(buf) < at + 4 * c:
                raise CorruptPayload("packet truncated inside the top-k values")
            values = np.frombuffer(buf[at : at + 4 * c], dtype="<f4").astype(np.float32)
            at += 4 * c
        elif self.method == "stc":
            nb = (c + 7) // 8
            if len(buf) < at + nb:
                raise CorruptPayload("packet truncated inside the sign bits")
            negative = np.unpackbits(np.frombuffer(buf[at : at + nb], dtype=np.uint8))[:c]
            negative = negative.astype(bool)
            at += nb
        positions = decode_positions(buf[at:], c, self.b, self.compressed_numel)
        return self._validated(positions, scales, dense_vals, values, negative)

    def _validated(self, positions, scales, dense_vals, values, negative) -> RawPacket:
        """Reject non-finite floats and slots with more than k positions (one compiled
        check, ``_check_packet``)."""
        bounds = np.empty(self.offsets.size, dtype=np.int64)
        bad = _check_packet(positions, self.offsets, self._k_array, bounds,
                            _EMPTY_F32 if scales is None else scales, dense_vals,
                            _EMPTY_F32 if values is None else values)
        if bad < -1:
            what = {-2: "scale", -3: "dense value", -4: "value"}[bad]
            raise CorruptPayload(f"packet holds a non-finite {what}")
        if bad >= 0:
            raise CorruptPayload(
                f"slot {self.slots[self.compressed_index[bad]].name!r} has "
                f"{int(bounds[bad + 1] - bounds[bad])} positions, k = {self.k[bad]}"
            )
        return RawPacket(positions, scales, dense_vals, values, negative, bounds)

    def scale_per_compressed(self, scales: np.ndarray) -> np.ndarray:
        """float32 scale of every compressed slot in order (0 for empty slots / topk)."""
        out = np.zeros(len(self.compressed_index), dtype=np.float32)
        if self.scaled_index:
            out[self._scaled_in_compressed] = scales
        return out

    def _assemble(self, positions, scales, dense_vals, values, negative, bounds) -> list[Message]:
        out: list[Message | None] = [None] * len(self.slots)
        scale_of = dict(zip(self.scaled_index, scales.tolist() if scales is not None else [],
                            strict=True))
        for j, i in enumerate(self.compressed_index):
            lo, hi = int(bounds[j]), int(bounds[j + 1])
            pos = positions[lo:hi] - self.offsets[j]
            scale = float(scale_of.get(i, 0.0))
            out[i] = Message(
                self.method, self.slots[i].numel, pos, scale,
                negative[lo:hi] if negative is not None else None,
                values[lo:hi] if values is not None else None,
            )
        at = 0
        for i in self.dense_index:
            n = self.slots[i].numel
            out[i] = Message("dense", n, np.empty(0, np.int64), 0.0, None,
                             np.array(dense_vals[at : at + n], dtype=np.float32))
            at += n
        return out  # type: ignore[return-value]

    # ---------------------------------------------------------------------------------------
    @property
    def padded_words(self) -> int:
        """int32 words of a padded packet (identical on every worker)."""
        if self.method == "dense":
            return 1 + self.dense_numel
        extra = self.k_total if self.method == "topk" else 0
        return 1 + self.k_total + len(self.scaled_index) + extra + self.dense_numel

    def encode_padded(self, messages: Sequence[Message], status: int = 0) -> np.ndarray:
        """The padded fixed-k packet as int32 words (status word first)."""
        self._check(messages)
        if any(s.numel > _I32_MAX - 1 for s in self.slots if s.compressed):
            raise InvalidOption("padded packets need tensors below 2**31 elements; use golomb")
        out = np.zeros(self.padded_words, dtype=np.int32)
        out[0] = status
        if self.method == "dense":
            _, _, dense_vals, _ = self._gather(messages)
            out[1:] = dense_vals.view(np.int32)
            return out
        at = 1
        vals_at = 1 + self.k_total + len(self.scaled_index)
        for j, i in enumerate(self.compressed_index):
            m = messages[i]
            c = m.positions.size
            codes = m.positions.astype(np.int64) + 1
            if self.method == "stc":
                codes = np.where(m.negative, -codes, codes)
            out[at : at + c] = codes
            if self.method == "topk":
                out[vals_at : vals_at + c] = m.values.view(np.int32)
                vals_at += self.k[j]
            at += self.k[j]
        scales = np.array([messages[i].scale for i in self.scaled_index], dtype=np.float32)
        out[at : at + scales.size] = scales.view(np.int32)
        if self.dense_numel:
            _, _, dense_vals, _ = self._gather(messages)
            out[-self.dense_numel :] = dense_vals.view(np.int32)
        return out

    def decode_padded(self, words: np.ndarray) -> list[Message]:
        """Messages from a padded packet (status word ignored here)."""
        return self._assemble(*self.decode_padded_raw(words))

    def decode_padded_raw(self, words: np.ndarray) -> RawPacket:
        """The validated contents of a padded packet (as ``decode_raw``)."""
        words = np.asarray(words)
        if words.dtype != np.int32 or words.shape != (self.padded_words,):
            raise CorruptPayload(
                f"padded packet has shape {words.shape}/{words.dtype}, "
                f"expected ({self.padded_words},)/int32"
            )
        dense_vals = words[words.size - self.dense_numel :].view(np.float32)
        if self.method == "dense":
            return self._validated(np.empty(0, np.int64), _EMPTY_F32, dense_vals, None, None)
        codes = words[1 : 1 + self.k_total].astype(np.int64)
        scales = words[1 + self.k_total : 1 + self.k_total + len(self.scaled_index)]
        scales = scales.view(np.float32)
        start = 1 + self.k_total + len(self.scaled_index)
        topv = None
        if self.method == "topk":
            topv = words[start : start + self.k_total].view(np.float32)
        ks = np.repeat(np.arange(len(self.k)), self.k)
        used = codes != 0
        pos = np.abs(codes[used]) - 1
        slot_of = ks[used]
        size_of = np.array([self.slots[i].numel for i in self.compressed_index], np.int64)
        if pos.size and (pos >= size_of[slot_of]).any():
            raise CorruptPayload("padded packet holds a position beyond its tensor")
        glob = pos + self.offsets[:-1][slot_of]
        order = np.argsort(glob, kind="stable")
        glob = glob[order]
        if glob.size > 1 and (np.diff(glob) <= 0).any():
            raise CorruptPayload("padded packet repeats a position")
        negative = (codes[used] < 0)[order] if self.method == "stc" else None
        if self.method != "stc" and (codes < 0).any():
            raise CorruptPayload("padded packet holds a negative code")
        values = topv[used][order] if topv is not None else None
        return self._validated(glob, scales, dense_vals, values, negative)
