"""Pure compression core of the communicate pillar (SPEC §4): no process group needed.

A *compressor* turns one accumulated update ``A`` (a tensor) into a :class:`Message`:

* ``sbc``  (Sparse Binary Compression): k = ⌈p·numel⌉; take the k largest positive entries
  and the k most negative ones, keep the side whose mean magnitude is larger; every kept
  position carries that side's mean (one signed float for the whole tensor).
* ``stc``  (Sparse Ternary Compression): the k entries of largest magnitude, each sent as ±μ
  with μ = mean |top-k| (one float + one sign bit per position).
* ``topk``: the k entries of largest magnitude with their own float32 values.
* ``dense``: every entry as float32 (the identity, for baselines and small tensors).

Selection never sorts the whole tensor: small tensors use one partial selection
(``np.argpartition``, introselect, O(N)); large ones first estimate the k-th value from a
random sample, keep the candidates beyond it with one vectorised pass and select among those
with a branch-free histogram search (``_kth_and_above``) — the result is the exact top-k (a
fallback to the full partial selection runs if the sample under-estimated), only faster
(≈ 1 ms instead of 200 ms at 10⁷ elements).
Selected positions always come out increasing (ties at the k-th value: earliest first).

Error feedback on large CPU tensors (``Compressor.accumulate_compress``) is one fused,
chunked pass: per chunk of 8192, a branch-free (vectorised) loop does u ← m·u + g, A += d
and sets a bit per element in two masks per 64 elements (A ≥ hi, A ≤ lo); a second loop
over the chunk, still in cache, walks the set bits and collects the candidates with their
values. The thresholds
come from a cached, sorted sample of 2¹³ positions of the *new* A (two size-r heaps, one
compiled call) or, from the second step of an accumulator on, from the previous step's k-th
values (``_next_hint``: no scattered gather on cold caches; about as many candidates, ≈ 1.3–2·k
against ≈ 1.5–1.7·k); the finish selects among the candidates only. Small tensors take
one compiled call for accumulation, selection and (SBC) the message: on a training step the
caches are cold and every extra Python-level call costs tens of microseconds.

:class:`ResidualMemory` keeps the error feedback: ``A ← A + ΔW; out = C(A); A ← A − out``,
per parameter name, in float64.  The values on the wire are float32 and every subtraction
removes exactly the float32 that was sent, so Σ sent + A = Σ ΔW holds exactly as long as
the values met at one position span fewer than 2²⁹ in magnitude (float64 holds the sum of
float32 numbers that close without rounding) — i.e. always in practice; nothing is dropped.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from numba import njit
from numba.cpython.unsafe.numbers import trailing_zeros

from ..codec import DnnzipError, InvalidOption

__all__ = [
    "METHODS",
    "Compressor",
    "Dense",
    "Message",
    "NonFiniteUpdate",
    "ResidualMemory",
    "SBC",
    "all_finite",
    "STC",
    "TopK",
    "check_density",
    "dense",
    "make_compressor",
    "num_selected",
    "sbc",
    "stc",
    "topk",
    "topk_indices",
]

METHODS = ("sbc", "stc", "topk", "dense")

#: tensors at least this large use the sampled-threshold selection
SAMPLED_MIN_NUMEL = 1 << 15
#: ... and in error feedback (``Compressor.accumulate_compress``) the fused pass, from this
#: size on: with the previous step's thresholds it needs no sample, and it beat the heap
#: top-k of the small path from 2 048 elements up (SBC, p = 0.01, one core: 29 vs 49 µs at
#: 4 096, 37 vs 117 µs at 10 240, 61 vs 364 µs at 30 000 elements)
FUSED_MIN_NUMEL = 1 << 11
_SAMPLE_SIZE = 1 << 13


class NonFiniteUpdate(DnnzipError, ValueError):
    """An update (gradient or weight change) holds NaN or Inf; nothing was accumulated."""


def check_density(p: float) -> float:
    """Validate the density p ∈ (0, 1]; return it as a float."""
    try:
        value = float(p)
    except (TypeError, ValueError) as exc:
        raise InvalidOption(f"density p must be a number in (0, 1], got {p!r}") from exc
    if not (0.0 < value <= 1.0):  # also rejects NaN
        raise InvalidOption(f"density p must lie in (0, 1], got {p!r}")
    return value


def num_selected(numel: int, p: float) -> int:
    """k = ⌈p·numel⌉ (0 for an empty tensor), computed so that p·numel integral stays exact."""
    if numel <= 0:
        return 0
    return min(numel, max(1, math.ceil(p * numel - 1e-9 * p * numel)))


# --------------------------------------------------------------------------------------------
# selection


def _as_numpy_1d(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x.reshape(-1)
    return x.detach().reshape(-1).cpu().numpy()


def all_finite(v: np.ndarray | torch.Tensor) -> bool:
    """True when no entry is NaN/Inf. One summation pass: NaN and Inf propagate into the
    sum; only when the sum is not finite (which an overflow could also cause) is the exact
    elementwise test run."""
    if v.size == 0 if isinstance(v, np.ndarray) else v.numel() == 0:
        return True
    if isinstance(v, np.ndarray):
        with np.errstate(over="ignore", invalid="ignore"):
            total = v.sum()
        return bool(np.isfinite(total)) or bool(np.isfinite(v).all())
    return math.isfinite(float(v.sum())) or bool(torch.isfinite(v).all())


@njit(cache=True)
def _collect(v, hi, lo, use_abs, cap, out_hi, out_lo):
    """One pass: indices with v ≥ hi into out_hi and v ≤ lo into out_lo (|v| ≥ hi when
    use_abs). Returns both counts (they may exceed cap: the caller then falls back)."""
    nh = 0
    nl = 0
    for i in range(v.size):
        x = v[i]
        if use_abs:
            x = abs(x)
        if x >= hi:
            if nh < cap:
                out_hi[nh] = i
            nh += 1
        if x <= lo:
            if nl < cap:
                out_lo[nl] = i
            nl += 1
    return nh, nl


@njit(inline="always")
def _take_update(g, u, m, use_mom, consume, i):
    """d_i = g_i, or with momentum u_i ← m·u_i + g_i (float32 rounding as
    u.mul_(m).add_(g)) and d_i = u_i; with ``consume`` g_i is zeroed behind the read."""
    d = g[i]
    if consume:
        g[i] = 0
    if use_mom:
        d = np.float32(np.float32(m * u[i]) + d)
        u[i] = d
    return d


@njit(inline="always")
def _mask_body(acc, g, u, m, use_mom, consume, use_abs, hi, lo, masks):
    """``_accumulate_masks`` with the three switches as constants (see there)."""
    n = acc.size
    full = n // 64
    blocks = (n + 63) // 64
    for b in range(full):  # a fixed trip count: LLVM vectorises the block
        up = np.uint64(0)
        down = np.uint64(0)
        for j in range(64):
            i = 64 * b + j
            x = acc[i] + _take_update(g, u, m, use_mom, consume, i)
            acc[i] = x
            if use_abs:
                x = abs(x)
            up |= np.uint64(x >= hi) << np.uint64(j)
            down |= np.uint64(x <= lo) << np.uint64(j)
        masks[b] = up
        masks[blocks + b] = down
    if full < blocks:
        up = np.uint64(0)
        down = np.uint64(0)
        for i in range(64 * full, n):
            x = acc[i] + _take_update(g, u, m, use_mom, consume, i)
            acc[i] = x
            if use_abs:
                x = abs(x)
            up |= np.uint64(x >= hi) << np.uint64(i - 64 * full)
            down |= np.uint64(x <= lo) << np.uint64(i - 64 * full)
        masks[full] = up
        masks[blocks + full] = down


@njit(cache=True)
def _accumulate_masks(acc, g, u, m, use_mom, consume, use_abs, hi, lo, masks):
    """The fused pass of error feedback, first half: d = g (or u ← m·u + g, d = u; m
    float32, the float32 rounding of u.mul_(m).add_(g)); acc += d (acc's dtype); per block
    of 64 elements two bit masks, bit j of masks[b]: acc ≥ hi, of masks[B + b]: acc ≤ lo
    (|acc| ≥ hi when use_abs; B = ⌈n/64⌉ blocks). With ``consume`` g is zeroed behind the
    read (the caller's output buffer then starts at 0 without another pass).

    Branch-free, so the compiler vectorises it (compares, shifts and an OR reduction per
    block), once per combination of the switches, each inlined with constants: with them
    as run-time flags LLVM kept a scalar loop, and flag bytes scanned 8 at a time cost a
    mispredicted branch per non-zero word (1 M elements, hot caches, Zen 4: 0.36 ms
    against 0.61 ms for flag bytes)."""
    if use_mom:
        if consume:
            if use_abs:
                _mask_body(acc, g, u, m, True, True, True, hi, lo, masks)
            else:
                _mask_body(acc, g, u, m, True, True, False, hi, lo, masks)
        elif use_abs:
            _mask_body(acc, g, u, m, True, False, True, hi, lo, masks)
        else:
            _mask_body(acc, g, u, m, True, False, False, hi, lo, masks)
    elif consume:
        if use_abs:
            _mask_body(acc, g, u, m, False, True, True, hi, lo, masks)
        else:
            _mask_body(acc, g, u, m, False, True, False, hi, lo, masks)
    elif use_abs:
        _mask_body(acc, g, u, m, False, False, True, hi, lo, masks)
    else:
        _mask_body(acc, g, u, m, False, False, False, hi, lo, masks)


@njit(cache=True)
def _accumulate_collect(acc, g, u, m, use_mom, consume, use_abs, hi, lo, masks, cap,
                        out_hi, val_hi, out_lo, val_lo):
    """acc += d with ``_accumulate_masks`` chunk by chunk (``masks``: the words of one
    chunk, ``_CHUNK`` / 32), then the chunk's flagged positions, increasing, with their new
    values (read back while the chunk is still in cache) into out_hi/val_hi (≥ hi) and
    out_lo/val_lo (≤ lo). Returns both counts (they may exceed cap: the caller then falls
    back)."""
    n = acc.size
    nh = 0
    nl = 0
    chunk = masks.size * 32
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        blocks = (e - s + 63) // 64
        words = masks[: 2 * blocks]
        if use_mom:
            _accumulate_masks(acc[s:e], g[s:e], u[s:e], m, True, consume, use_abs, hi, lo,
                              words)
        else:
            _accumulate_masks(acc[s:e], g[s:e], u, m, False, consume, use_abs, hi, lo, words)
        for b in range(blocks):
            nh = _take_mask(words[b], s + 64 * b, acc, cap, out_hi, val_hi, nh)
            nl = _take_mask(words[blocks + b], s + 64 * b, acc, cap, out_lo, val_lo, nl)
    return nh, nl


@njit(inline="always")
def _take_mask(h, base, acc, cap, out, val, n):
    """Append the positions base + j of the set bits j of ``h`` (and their acc values) to
    out/val from count n, lowest first, writing only below cap; the new count."""
    while h != 0:
        i = base + trailing_zeros(h)
        if n < cap:
            out[n] = i
            val[n] = acc[i]
        n += 1
        h &= h - np.uint64(1)
    return n


#: elements per chunk of the fused pass (a chunk of acc and g stays in L2)
_CHUNK = 8192
_FLAGS = threading.local()


def _scratch(name: str, size: int, dtype) -> np.ndarray:
    """A per-thread scratch array of ``size`` elements, reused (and grown) between calls:
    only for intermediate results that no returned object keeps."""
    bufs = getattr(_FLAGS, "scratch", None)
    if bufs is None:
        bufs = _FLAGS.scratch = {}
    key = (name, np.dtype(dtype).str)
    buf = bufs.get(key)
    if buf is None or buf.size < size:
        buf = bufs[key] = np.empty(max(size, 1), dtype=dtype)
    return buf[:size]


def _mask_chunk() -> np.ndarray:
    """The per-thread scratch of the two mask words per 64 elements of one ``_CHUNK``."""
    return _scratch("masks", _CHUNK // 32, np.uint64)


@njit(cache=True)
def _sample_updated(acc, g, u, m, use_mom, idx, out):
    """out[j] = acc[idx[j]] + d[idx[j]] with d as in ``_accumulate_masks`` (nothing is
    written back): the values the fused pass is about to produce, at the sample positions."""
    for j in range(idx.size):
        i = idx[j]
        d = g[i]
        if use_mom:
            d = np.float32(np.float32(m * u[i]) + d)
        out[j] = acc[i] + d


#: bins of the histogram selection (a power of two, the histogram stays in L1)
_SELECT_BINS = 1024


@njit(cache=True)
def _kth_and_above(vals, mode, k, scratch):
    """(t, a): the k-th largest key(vals) (mode 0: v, 1: −v, 2: |v|), 1 ≤ k ≤ vals.size,
    exact, and how many keys are strictly above t (counted on the way: the bins above the
    answer's, then the sorted rest).

    Histogram selection instead of quickselect, whose data-dependent branches mispredict
    on every other element: one pass for min/max, one that counts the keys per linear bin
    ⌊(x − min)·B/(max − min)⌋ (monotone in x: IEEE subtraction and multiplication never
    reverse an order, so a bin holds a contiguous key range), one branch-free pass that
    copies the bin holding the answer into ``scratch`` (float64, ≥ vals.size), then the
    same on that bin until it is small enough to sort (at most 8 rounds: keys spread over
    many magnitudes end in the sort, O(n log n)). The keys are finite (the caller checked
    the update)."""
    n = vals.size
    w = scratch[:n]
    for i in range(n):
        w[i] = _key(vals[i], mode)
    counts = np.zeros(_SELECT_BINS, dtype=np.int64)
    need = k  # the answer is the need-th largest of w[:n]
    total_above = 0
    rounds = 0
    while n > 64 and rounds < 8:  # each round shrinks n; skewed keys may need the sort
        rounds += 1
        lo = w[0]
        hi = w[0]
        for i in range(n):
            lo = min(lo, w[i])
            hi = max(hi, w[i])
        if lo == hi:
            return lo, total_above
        scale = (_SELECT_BINS - 1) / (hi - lo)
        counts[:] = 0
        for i in range(n):
            counts[int((w[i] - lo) * scale)] += 1
        above = 0
        b = _SELECT_BINS - 1
        while above + counts[b] < need:
            above += counts[b]
            b -= 1
        need -= above
        total_above += above
        m = 0
        for i in range(n):  # stable compaction of bin b to the front (m ≤ i: in place)
            x = w[i]
            w[m] = x
            m += int((x - lo) * scale) == b
        n = m
    w[:n].sort()
    t = w[n - need]
    m = n - need + 1
    while m < n and w[m] == t:
        m += 1
    return t, total_above + n - m


@njit(cache=True)
def _pick_top(vals, mode, k, cand, out, out_vals, scratch):
    """From candidates ``cand`` (increasing positions) with values ``vals``: the k largest
    keys (``_key`` mode) — every key above the k-th largest t, then the first keys equal to
    t until k are taken. Writes the chosen positions, still increasing, into out and their
    values into out_vals, both of at least k + 1 elements: the pick is branch-free and
    writes one slot past the last taken (``scratch``: see ``_kth_and_above``)."""
    t, above = _kth_and_above(vals, mode, k, scratch)
    ties = k - above
    n = 0
    for j in range(vals.size):
        x = _key(vals[j], mode)
        tie = x == t
        take = (x > t) | (tie & (ties > 0))
        out[n] = cand[j]
        out_vals[n] = vals[j]
        n += take
        ties -= tie & take
    return n


@njit(cache=True)
def _sample_extremes(sample, r, use_abs, two_sided):
    """(r-th largest key, r-th smallest value) of the sample, key = |x| with ``use_abs``
    (−∞ for the second unless two_sided): two size-r heaps in one pass."""
    m = sample.size
    top = np.empty(r, dtype=np.float64)
    bottom = np.empty(r, dtype=np.float64)  # negated values: a min-heap of −x
    for i in range(r):
        x = abs(sample[i]) if use_abs else np.float64(sample[i])
        top[i] = x
        bottom[i] = -x
    for start in range(r // 2 - 1, -1, -1):
        _sift(top, start, r)
        _sift(bottom, start, r)
    for i in range(r, m):
        x = abs(sample[i]) if use_abs else np.float64(sample[i])
        if x > top[0]:
            top[0] = x
            _sift(top, 0, r)
        if two_sided and -x > bottom[0]:
            bottom[0] = -x
            _sift(bottom, 0, r)
    return top[0], (-bottom[0] if two_sided else -np.inf)


@njit(cache=True)
def _key(x, mode):
    return x if mode == 0 else (-x if mode == 1 else abs(x))


@njit(cache=True)
def _top_small(v, k, mode, out, out_vals):
    """Exact top-k of key(v) (mode 0: v, 1: −v, 2: |v|) for a small tensor, 0 < k < n:
    a size-k min-heap finds the k-th largest key t in one pass (O(n log k), few sift-downs
    on unsorted data), then one ordered pass takes every key > t and the earliest keys == t
    — the same rule as ``_pick_top``. Positions increasing, with their values."""
    heap = np.empty(k, dtype=np.float64)
    for i in range(k):
        heap[i] = _key(v[i], mode)
    for start in range(k // 2 - 1, -1, -1):  # heapify
        _sift(heap, start, k)
    for i in range(k, v.size):
        x = _key(v[i], mode)
        if x > heap[0]:
            heap[0] = x
            _sift(heap, 0, k)
    t = heap[0]
    above = 0
    for i in range(v.size):
        if _key(v[i], mode) > t:
            above += 1
    ties = k - above
    n = 0
    for i in range(v.size):
        x = _key(v[i], mode)
        if x > t or (x == t and ties > 0):
            if x == t:
                ties -= 1
            out[n] = i
            out_vals[n] = v[i]
            n += 1
    return n


@njit(cache=True)
def _sift(heap, i, size):
    """Sift heap[i] down in a min-heap of ``size`` entries."""
    x = heap[i]
    while True:
        c = 2 * i + 1
        if c >= size:
            break
        if c + 1 < size and heap[c + 1] < heap[c]:
            c += 1
        if heap[c] >= x:
            break
        heap[i] = heap[c]
        i = c
    heap[i] = x


@njit(cache=True)
def _accumulate(acc, g, u, m, use_mom, consume):
    """acc += d, d = g or u ← m·u + g (float32 rounding as u.mul_(m).add_(g)); with
    ``consume`` g is zeroed behind the read: the small-tensor half of ``_accumulate_masks``."""
    for i in range(acc.size):
        acc[i] += _take_update(g, u, m, use_mom, consume, i)


@njit(cache=True)
def _add_at(acc, positions, values, scale, sign):
    """acc[positions] += sign·value (values[j], or the single ``scale`` if values is empty):
    the compiled index_add of what was sent, in acc's dtype."""
    if values.size:
        for j in range(positions.size):
            acc[positions[j]] += sign * values[j]
    else:
        for j in range(positions.size):
            acc[positions[j]] += sign * scale


@njit(cache=True)
def _small_select(a, g, u, m, use_mom, consume, k, two, top, tv, bottom, bv):
    """The whole small-tensor path in one call: a += d (``_accumulate``), then the top-k
    of a (|a| unless ``two``) into top/tv and, with ``two``, the bottom-k into bottom/bv
    (``_top_small``)."""
    _accumulate(a, g, u, m, use_mom, consume)
    _top_small(a, k, 0 if two else 2, top, tv)
    if two:
        _top_small(a, k, 1, bottom, bv)


@njit(cache=True)
def _small_sbc(a, g, u, m, use_mom, consume, k):
    """``_small_select`` for SBC followed by ``_sbc_side``: (positions, μ)."""
    top = np.empty(k, dtype=np.int64)
    tv = np.empty(k, dtype=a.dtype)
    bottom = np.empty(k, dtype=np.int64)
    bv = np.empty(k, dtype=a.dtype)
    _small_select(a, g, u, m, use_mom, consume, k, True, top, tv, bottom, bv)
    return _sbc_side(top, tv, bottom, bv)


@njit(cache=True)
def _sampled_extremes(acc, g, u, m, use_mom, idx, r, use_abs, two_sided):
    """``_sample_extremes`` of the values the fused pass is about to produce at the sample
    positions ``idx`` (``_sample_updated``), in one call."""
    sample = np.empty(idx.size, dtype=acc.dtype)
    _sample_updated(acc, g, u, m, use_mom, idx, sample)
    return _sample_extremes(sample, r, use_abs, two_sided)


@njit(cache=True)
def _pick_signed(vals, mode, k, cand, out, scratch):
    """SBC's half of ``_pick_top``: of the k largest keys (mode 0: v, 1: −v; the same
    rule: every key above the k-th largest t, then the first ties), only the positions
    whose value has the side's sign (> 0 for mode 0, < 0 for mode 1) go into ``out``
    (≥ k + 1 slots, branch-free), with the float64 sum of their values in the same order
    — what ``_pick_top`` followed by ``_signed_part`` gives, without the copies. Returns
    (count, sum, t)."""
    t, above = _kth_and_above(vals, mode, k, scratch)
    ties = k - above
    n = 0
    total = 0.0
    for j in range(vals.size):
        v = vals[j]
        x = _key(v, mode)
        tie = x == t
        take = (x > t) | (tie & (ties > 0))
        good = take & ((v > 0) if mode == 0 else (v < 0))
        out[n] = cand[j]
        n += good
        total += v if good else 0.0  # a select, not a branch (adding 0.0 changes nothing)
        ties -= tie & take
    return n, total, t


@njit(cache=True)
def _sbc_from_candidates(k, cand_hi, val_hi, mode_hi, cand_lo, val_lo, mode_lo, scratch):
    """SBC from the fused pass's candidates: the top-k among (cand_hi, val_hi) and the
    bottom-k among (cand_lo, val_lo), each kept only where its sign is the side's
    (``_pick_signed``; the caller passes modes 0 and 1 — as arguments: with both as
    constants LLVM compiled the two inlined selections several times slower), then the
    choice of ``_sbc_side``: (positions, μ, k-th largest value, k-th smallest value)."""
    top = np.empty(k + 1, dtype=np.int64)
    n_pos, s_pos, t_hi = _pick_signed(val_hi, mode_hi, k, cand_hi, top, scratch)
    bottom = np.empty(k + 1, dtype=np.int64)
    n_neg, s_neg, t_lo = _pick_signed(val_lo, mode_lo, k, cand_lo, bottom, scratch)
    t_hi = np.float64(_key(t_hi, mode_hi))  # keys back to values
    t_lo = np.float64(_key(t_lo, mode_lo))
    if n_pos == 0 and n_neg == 0:
        return top[:0], 0.0, t_hi, t_lo
    mu_pos = s_pos / n_pos if n_pos else 0.0
    mu_neg = s_neg / n_neg if n_neg else 0.0
    if mu_pos >= -mu_neg:
        return top[:n_pos], mu_pos, t_hi, t_lo
    return bottom[:n_neg], mu_neg, t_hi, t_lo


def _next_hint(hint: list[float], k: int, upper: tuple[float, int, float, bool],
               lower: tuple[float, int, float, bool] | None) -> None:
    """Thresholds for the next fused pass on the same accumulator, into ``hint``.

    Per side (threshold h, its candidate count c, the k-th value t, whether that side was
    sent): the c − k candidates between t and h give the density just inside the k-th
    value. A side that was not sent keeps its tail, so the next threshold sits
    0.15·k + 4√k + 8 candidates' worth beyond t at that density; on a sent side the k
    sent entries drop out of the tail (A − μ is small), so it sits k more beyond. (The
    residual's distribution otherwise moves little between steps.) Too few extra
    candidates to estimate a density (< 16): no hint, the next call samples."""
    extra = 0.15 * k + 4.0 * math.sqrt(k) + 8.0
    out = [-math.inf, -math.inf]
    for j, side in enumerate((upper, lower)):
        if side is None:
            continue
        h, c, t, sent = side
        if c - k < 16:
            return
        out[j] = t + (h - t) * (extra + k * sent) / (c - k)  # beyond t, towards h and past
    hint[:] = out


def _partial_top(values: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k largest ``values`` (one argpartition; all if fewer)."""
    if values.size <= k:
        return np.arange(values.size)
    return np.argpartition(values, values.size - k)[values.size - k :]


def _sample_rank(m: int, n: int, k: int) -> int:
    """r: the sample quantile rank with ≈ k + 4√k + 8 of the n entries beyond it (the
    sample count is binomial: 4 standard deviations of margin)."""
    expect = k * m / n
    return max(1, min(m, int(expect + 4.0 * math.sqrt(expect) + 8)))


def _capacity(k: int) -> int:
    """Candidates collected at most per side before the exact fallback runs."""
    return int(4 * (k + 4 * math.sqrt(k) + 8) + 64)


def _thresholds(sample: np.ndarray, n: int, k: int, use_abs: bool, two_sided: bool = True):
    """Upper/lower sample quantiles of rank ``_sample_rank`` and the candidate capacity.
    Without ``two_sided`` the lower one is −∞; the upper one is of |sample| with
    ``use_abs``. One compiled pass over the sample (``_sample_extremes``)."""
    hi, lo = _sample_extremes(sample, _sample_rank(sample.size, n, k), use_abs, two_sided)
    return float(hi), float(lo), _capacity(k)


@lru_cache(maxsize=256)
def _sample_index(n: int, seed: int) -> np.ndarray:
    """2¹³ uniform positions (with repetition) of an n-element tensor, sorted so the gather
    walks memory forwards; cached — the same layout is sampled every step (read-only)."""
    idx = np.sort(np.random.default_rng(seed + n).integers(0, n, min(n, _SAMPLE_SIZE)))
    idx.setflags(write=False)
    return idx


def _top_of_candidates(cand, vals, k, use_abs, negate):
    """The k largest keys (vals, |vals| or −vals) among the candidates (increasing
    positions), still increasing, with their values: one compiled selection and pick."""
    out = np.empty(k + 1, dtype=np.int64)
    out_vals = np.empty(k + 1, dtype=vals.dtype)
    _pick_top(vals, 2 if use_abs else (1 if negate else 0), k, cand, out, out_vals,
              _scratch("keys", vals.size, np.float64))
    return out[:k], out_vals[:k]


def _finish(v, k, nh, nl, out_hi, out_lo, cap, use_abs, two_sided, val_hi=None, val_lo=None):
    """Exact top-k (and bottom-k) from the collected candidates (their values val_hi/lo,
    else read from v), or by one full partial selection when the sample mis-estimated (too
    few candidates, or more than cap). Returns (top, v[top], bottom, v[bottom]) with
    increasing positions (bottom None unless two_sided)."""
    n = v.size
    if k <= nh <= cap:
        cand = out_hi[:nh]
        top, tv = _top_of_candidates(cand, v[cand] if val_hi is None else val_hi[:nh], k,
                                     use_abs, False)
    else:
        key = np.abs(v) if use_abs else v
        top = np.sort(np.argpartition(key, n - k)[n - k :]).astype(np.int64, copy=False)
        tv = v[top]
    bottom = bv = None
    if two_sided:
        if k <= nl <= cap:
            cand = out_lo[:nl]
            bottom, bv = _top_of_candidates(cand, v[cand] if val_lo is None else val_lo[:nl],
                                            k, False, True)
        else:
            bottom = np.sort(np.argpartition(v, k - 1)[:k]).astype(np.int64, copy=False)
            bv = v[bottom]
    return top, tv, bottom, bv


def _use_sampled(n: int, k: int, method: str, min_numel: int = SAMPLED_MIN_NUMEL) -> bool:
    big = method == "sampled" or (method == "auto" and n >= min_numel)
    return big and 0 < k < n // 8


def _use_fused(n: int, k: int, method: str) -> bool:
    """Whether error feedback runs the fused accumulate + collect pass (``FUSED_MIN_NUMEL``)."""
    return _use_sampled(n, k, method, FUSED_MIN_NUMEL)


def _select(v: np.ndarray, k: int, method: str, seed: int, use_abs: bool, two_sided: bool):
    """Exact top-k of v (or |v|), and with ``two_sided`` also the bottom-k of v:
    (top, v[top], bottom, v[bottom]), positions increasing (bottom None if one-sided)."""
    n = v.size
    if k <= 0 or n == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, v[empty], (empty if two_sided else None), (v[empty] if two_sided else None)
    if k >= n:
        allidx = np.arange(n, dtype=np.int64)
        return allidx, v, (allidx if two_sided else None), (v if two_sided else None)
    if _use_sampled(n, k, method):
        hi, lo, cap = _thresholds(v[_sample_index(n, seed)], n, k, use_abs, two_sided)
        out_hi = np.empty(cap, dtype=np.int64)
        out_lo = np.empty(cap if two_sided else 1, dtype=np.int64)
        nh, nl = _collect(v, hi, lo, use_abs, cap, out_hi, out_lo)
        return _finish(v, k, nh, nl, out_hi, out_lo, cap, use_abs, two_sided)
    return _finish(v, k, -1, -1, None, None, 0, use_abs, two_sided)


def topk_indices(
    x: torch.Tensor | np.ndarray, k: int, *, method: str = "auto", seed: int = 0
) -> np.ndarray:
    """Indices (int64, unsorted) of the k largest values of ``x`` (flattened).

    ``method``: "exact" = one ``np.argpartition`` (introselect, O(N)); "sampled" = threshold
    from a random sample of 2¹³ entries, candidates beyond it collected in one compiled pass,
    a compiled histogram selection among them; "auto" = sampled from 2¹⁵ elements on. Both
    return an exact top-k (ties broken arbitrarily). Non-CPU torch tensors use ``torch.topk``
    on their device.
    """
    if method not in ("auto", "exact", "sampled"):
        raise InvalidOption(f"unknown selection method {method!r}")
    if isinstance(x, torch.Tensor) and x.device.type != "cpu":
        flat = x.detach().reshape(-1)
        k = max(0, min(int(k), flat.numel()))
        return torch.topk(flat, k, sorted=False).indices.cpu().numpy().astype(np.int64)
    return _select(_as_numpy_1d(x), int(k), method, seed, False, False)[0]


# --------------------------------------------------------------------------------------------
# messages


@dataclass(frozen=True)
class Message:
    """One compressed tensor. ``positions`` are sorted flat indices (int64).

    Values at the positions: sbc → ``scale`` everywhere (signed mean); stc → ±``scale``
    (``negative`` marks the minus signs); topk → ``values``; dense → ``values`` holds every
    entry and ``positions`` is empty.
    """

    method: str
    numel: int
    positions: np.ndarray
    scale: float = 0.0
    negative: np.ndarray | None = None
    values: np.ndarray | None = None

    @property
    def count(self) -> int:
        return self.numel if self.method == "dense" else int(self.positions.size)

    def position_values(self) -> np.ndarray:
        """float32 values at ``positions`` (the dense vector for method "dense")."""
        if self.method == "dense" or self.method == "topk":
            assert self.values is not None
            return self.values
        scale = np.float32(self.scale)
        if self.method == "sbc":
            return np.full(self.positions.size, scale, dtype=np.float32)
        assert self.negative is not None
        return np.where(self.negative, -scale, scale).astype(np.float32)

    def to_dense(self, dtype: torch.dtype = torch.float32, device: Any = "cpu") -> torch.Tensor:
        """The flat dense tensor this message stands for."""
        out = torch.zeros(self.numel, dtype=dtype, device=device)
        self.add_to(out)
        return out

    def add_to(self, out: torch.Tensor) -> None:
        """out[positions] += values (``out`` flat, any float dtype/device)."""
        vals = torch.from_numpy(self.position_values()).to(device=out.device, dtype=out.dtype)
        if self.method == "dense":
            out.add_(vals)
        elif self.positions.size:
            idx = torch.from_numpy(self.positions).to(out.device)
            out.index_add_(0, idx, vals)


def _finite_or_raise(v: np.ndarray) -> None:
    if not all_finite(v):
        raise NonFiniteUpdate("update holds NaN or Inf")


@njit(cache=True)
def _signed_part(vals, idx, positive):
    """The entries of idx whose value (vals, aligned with idx) is > 0 (``positive``) or
    < 0, in order, and the float64 sum of those values (sequential)."""
    out = np.empty(idx.size, dtype=np.int64)
    n = 0
    total = 0.0
    for j in range(idx.size):
        x = vals[j]
        if (x > 0) if positive else (x < 0):
            out[n] = idx[j]
            n += 1
            total += x
    return out[:n], total


@njit(cache=True)
def _sbc_side(top, tv, bottom, bv):
    """SBC's choice from the selected extremes: μ₊ = mean of the top entries > 0, μ₋ =
    mean of the bottom entries < 0 (float64, sequential sums); the side with the larger
    |μ| (ties: positive). Returns (its positions, μ); no positions and μ = 0 when no
    selected entry is non-zero."""
    pos, s_pos = _signed_part(tv, top, True)
    neg, s_neg = _signed_part(bv, bottom, False)
    if pos.size == 0 and neg.size == 0:
        return pos, 0.0
    mu_pos = s_pos / pos.size if pos.size else 0.0
    mu_neg = s_neg / neg.size if neg.size else 0.0
    if mu_pos >= -mu_neg:
        return pos, mu_pos
    return neg, mu_neg


def _sbc_message(v: np.ndarray, top: np.ndarray, tv: np.ndarray, bottom: np.ndarray,
                 bv: np.ndarray) -> Message:
    """μ₊ = mean of the selected entries > 0, μ₋ = mean of those < 0; keep the larger |μ|.
    ``top``/``bottom`` are increasing positions, tv/bv their values (``_select``)."""
    return _sbc_result(v.size, *_sbc_side(top, tv, bottom, bv))


def _sbc_result(numel: int, keep: np.ndarray, mu: float) -> Message:
    """The SBC message of ``_sbc_side``'s choice: μ travels as float32."""
    return Message("sbc", numel, keep, float(np.float32(mu)))


def _stc_message(v: np.ndarray, idx: np.ndarray, sel: np.ndarray) -> Message:
    nz = sel != 0
    idx, sel = idx[nz], sel[nz]
    mu = float(np.float32(np.abs(sel).mean(dtype=np.float64))) if sel.size else 0.0
    return Message("stc", v.size, idx, mu, sel < 0)


def _topk_message(v: np.ndarray, idx: np.ndarray, sel: np.ndarray) -> Message:
    nz = sel != 0
    return Message("topk", v.size, idx[nz], 0.0, None, sel[nz].astype(np.float32))


def _compress(method: str, v: np.ndarray, p: float, selection: str) -> Message:
    if method == "dense":
        return dense(v)
    _finite_or_raise(v)
    k = num_selected(v.size, p)
    return _build(method, v, *_select(v, k, selection, 0, method != "sbc", method == "sbc"))


def _build(method: str, v: np.ndarray, top: np.ndarray, tv: np.ndarray,
           bottom: np.ndarray | None, bv: np.ndarray | None) -> Message:
    if method == "sbc":
        assert bottom is not None and bv is not None
        return _sbc_message(v, top, tv, bottom, bv)
    return _stc_message(v, top, tv) if method == "stc" else _topk_message(v, top, tv)


def sbc(x: torch.Tensor | np.ndarray, p: float, *, method: str = "auto") -> Message:
    """Sparse Binary Compression of ``x`` at density p (see module docstring).

    μ₊ = mean of the k largest entries that are > 0, μ₋ = mean of the k smallest entries
    that are < 0; the side with the larger |μ| is kept (ties: positive).
    """
    return _compress("sbc", _as_numpy_1d(x), check_density(p), method)


def stc(x: torch.Tensor | np.ndarray, p: float, *, method: str = "auto") -> Message:
    """Sparse Ternary Compression: top-k by magnitude, sent as ±μ, μ = mean |top-k|.

    Zeros are never selected (a tensor with fewer than k non-zeros sends fewer positions).
    """
    return _compress("stc", _as_numpy_1d(x), check_density(p), method)


def topk(x: torch.Tensor | np.ndarray, p: float, *, method: str = "auto") -> Message:
    """Plain top-k sparsification: the k largest-magnitude non-zero entries, float32 values."""
    return _compress("topk", _as_numpy_1d(x), check_density(p), method)


def dense(x: torch.Tensor | np.ndarray, *, check: bool = True) -> Message:
    """The identity compressor: every entry as float32 (``check=False``: the caller has
    already checked that x is finite)."""
    v = _as_numpy_1d(x)
    if check:
        _finite_or_raise(v)
    return Message("dense", v.size, np.empty(0, dtype=np.int64), 0.0, None,
                   v.astype(np.float32))


class Compressor:
    """A configured compressor: ``compressor(x) -> Message``; JSON config for handshakes."""

    method: str = ""

    def __init__(self, p: float = 1.0, selection: str = "auto"):
        self.p = check_density(p)
        if selection not in ("auto", "exact", "sampled"):
            raise InvalidOption(f"unknown selection method {selection!r}")
        self.selection = selection
        #: fused selections whose sample mis-estimated the threshold (full partial selection)
        self.fallbacks = 0
        #: fused passes whose hinted thresholds missed (a sampled selection reran)
        self.hint_misses = 0

    def __call__(self, x: torch.Tensor | np.ndarray) -> Message:
        return _compress(self.method, _as_numpy_1d(x), self.p, self.selection)

    def accumulate_compress(
        self,
        acc: torch.Tensor,
        update: torch.Tensor,
        momentum_buffer: torch.Tensor | None = None,
        momentum: float = 0.0,
        *,
        consume: bool = False,
        hint: list[float] | None = None,
    ) -> Message:
        """acc += d, then compress acc, where d = update, or with a momentum buffer u:
        u ← m·u + update, d = u (DGC momentum correction). The caller has checked that
        ``update`` is finite. For CPU tensors of at least ``FUSED_MIN_NUMEL`` elements this
        is one compiled pass that adds and collects the candidates (thresholds from a sample
        of the new values). ``consume``:
        ``update`` is zeroed on return (in the fused pass, behind the read), so a caller
        that writes the exchanged mean into the same memory needs no zeroing pass.

        ``hint``: a list kept by the caller for this accumulator between calls. The fused
        pass then takes its thresholds from the previous call's k-th values instead of a
        sample (which costs a scattered gather on cold caches), placed by the candidate
        density just below the k-th value (``_next_hint``); the selection stays exact.
        When the distribution moved too far (too few or too many candidates), the
        selection reruns on the updated A from a sample (``hint_misses``) and the next
        call samples again."""
        g = update.detach().reshape(-1)
        use_mom = momentum_buffer is not None and momentum != 0.0
        n = acc.numel()
        k = num_selected(n, self.p)
        fused = (
            acc.device.type == "cpu" and acc.dtype in (torch.float64, torch.float32)
            and g.dtype == torch.float32 and g.is_contiguous() and self.method != "dense"
            and _use_fused(n, k, self.selection)
            and (not use_mom or (momentum_buffer.dtype == torch.float32
                                 and momentum_buffer.is_contiguous()))
        )
        small = (
            not fused and acc.device.type == "cpu" and acc.dtype in (torch.float64, torch.float32)
            and g.dtype == torch.float32 and g.is_contiguous() and self.method != "dense"
            and 0 < k < n and not _use_fused(n, k, self.selection)
            and (not use_mom or (momentum_buffer.dtype == torch.float32
                                 and momentum_buffer.is_contiguous()))
        )
        if small:  # two compiled calls instead of a dozen small array operations
            a = acc.numpy()
            un = momentum_buffer.numpy() if use_mom else _NO_MOMENTUM
            m = np.float32(momentum)
            if self.method == "sbc":
                return _sbc_result(n, *_small_sbc(a, g.numpy(), un, m, use_mom, consume, k))
            top, tv = np.empty(k, np.int64), np.empty(k, a.dtype)
            _small_select(a, g.numpy(), un, m, use_mom, consume, k, False, top, tv, top, tv)
            return _build(self.method, a, top, tv, None, None)
        if not fused:
            if use_mom:
                momentum_buffer.mul_(momentum).add_(g)
                acc.add_(momentum_buffer)
            else:
                acc.add_(g)
            if consume:
                g.zero_()
            return self(acc)
        a = acc.numpy()
        gn = g.numpy()
        un = momentum_buffer.numpy() if use_mom else _NO_MOMENTUM
        m = np.float32(momentum)
        two = self.method == "sbc"
        use_abs = not two
        hinted = hint is not None and len(hint) == 2
        if hinted:  # last call's thresholds, moved to ≈ k + margin candidates
            hi, lo = hint
        else:
            s = _sample_index(n, 0)
            hi, lo = _sampled_extremes(a, gn, un, m, use_mom, s, _sample_rank(s.size, n, k),
                                       use_abs, two)
        if hint is not None:
            hint.clear()
        cap = _capacity(k)
        # candidate buffers are reused between calls: fresh ones cost page faults per step
        out_hi = _scratch("out_hi", cap, np.int64)
        val_hi = _scratch("val_hi", cap, a.dtype)
        out_lo = _scratch("out_lo", cap if two else 1, np.int64)
        val_lo = _scratch("val_lo", cap if two else 1, a.dtype)
        nh, nl = _accumulate_collect(a, gn, un, m, use_mom, consume, use_abs, hi, lo,
                                     _mask_chunk(), cap, out_hi, val_hi, out_lo, val_lo)
        if not (k <= nh <= cap and (not two or k <= nl <= cap)):
            if hinted:  # the distribution moved: A is updated, select on it by a sample
                self.hint_misses += 1
                return _build(self.method, a, *_select(a, k, "sampled", 0, use_abs, two))
            self.fallbacks += 1
        elif two:  # the usual SBC case: selection and message in one compiled call
            keep, mu, t_hi, t_lo = _sbc_from_candidates(
                k, out_hi[:nh], val_hi[:nh], 0, out_lo[:nl], val_lo[:nl], 1,
                _scratch("keys", cap, np.float64))
            if hint is not None:
                _next_hint(hint, k, (hi, nh, t_hi, mu > 0), (lo, nl, t_lo, mu < 0))
            return _sbc_result(n, keep, mu)
        top, tv, bottom, bv = _finish(a, k, nh, nl, out_hi, out_lo, cap, use_abs, two,
                                      val_hi, val_lo)
        if hint is not None and k <= nh <= cap and not two:
            _next_hint(hint, k, (hi, nh, float(np.abs(tv).min()), True), None)
        return _build(self.method, a, top, tv, bottom, bv)

    def get_config(self) -> dict[str, Any]:
        return {"method": self.method, "p": self.p, "selection": self.selection}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"


class SBC(Compressor):
    method = "sbc"


class STC(Compressor):
    method = "stc"


class TopK(Compressor):
    method = "topk"


class Dense(Compressor):
    method = "dense"

    def __init__(self, p: float = 1.0, selection: str = "auto"):
        super().__init__(1.0, selection)


_CLASSES: dict[str, type[Compressor]] = {"sbc": SBC, "stc": STC, "topk": TopK, "dense": Dense}


def make_compressor(method: str, p: float = 1.0, selection: str = "auto") -> Compressor:
    """Compressor by name: "sbc", "stc", "topk" or "dense"."""
    cls = _CLASSES.get(method)
    if cls is None:
        raise InvalidOption(f"unknown compression method {method!r} (known: {', '.join(METHODS)})")
    return cls(p, selection)


# --------------------------------------------------------------------------------------------
# residual memory


class ResidualMemory:
    """Error feedback keyed by parameter name: A ← A + ΔW; m = C(A); A ← A − m.

    Accumulators are float64 on the update's device; what is subtracted is exactly the
    float32 sent, so Σ sent + A = Σ ΔW (see module docstring). ``dtype=torch.float32``
    halves memory and traffic; conservation then holds up to one float32 rounding per
    element and step (error feedback still loses nothing systematically). A non-finite update raises
    :class:`NonFiniteUpdate` before anything is accumulated.
    """

    def __init__(self, dtype: torch.dtype = torch.float64):
        self.dtype = dtype
        self._acc: dict[str, torch.Tensor] = {}
        #: per name, the fused selection's thresholds for the next step (a speed hint only)
        self._hints: dict[str, list[float]] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._acc

    def residual(self, name: str) -> torch.Tensor:
        return self._acc[name]

    def names(self) -> list[str]:
        return list(self._acc)

    def accumulate(self, name: str, update: torch.Tensor, check: bool = True) -> torch.Tensor:
        """A_name += update (flattened); returns A_name. Raises on NaN/Inf, A untouched
        (``check=False`` when the caller has already checked)."""
        flat = update.detach().reshape(-1)
        if check and not all_finite(flat):
            raise NonFiniteUpdate(f"update of {name!r} holds NaN or Inf; nothing accumulated")
        acc = self._acc.get(name)
        if acc is None:
            acc = torch.zeros(flat.numel(), dtype=self.dtype, device=flat.device)
            self._acc[name] = acc
        elif acc.numel() != flat.numel():
            raise InvalidOption(
                f"update of {name!r} has {flat.numel()} elements, residual has {acc.numel()}"
            )
        acc.add_(flat)  # promotes in the kernel, no temporary copy
        return acc

    def subtract(self, name: str, message: Message) -> None:
        """A_name −= the float32 values of ``message`` (what was actually sent)."""
        _subtract(self._acc[name], message)

    def accumulate_compress(
        self,
        name: str,
        update: torch.Tensor,
        compressor: Compressor,
        momentum_buffer: torch.Tensor | None = None,
        momentum: float = 0.0,
        *,
        consume: bool = False,
    ) -> Message:
        """A += update (or the momentum-corrected u) and compress A, fused where possible;
        the caller subtracts the message once it was sent (``subtract``). No finiteness
        check here: the caller checked ``update``. ``consume``: zero ``update`` on return."""
        acc = self._acc.get(name)
        n = update.numel()
        if acc is None:
            acc = torch.zeros(n, dtype=self.dtype, device=update.device)
            self._acc[name] = acc
        elif acc.numel() != n:
            raise InvalidOption(f"update of {name!r} has {n} elements, residual has {acc.numel()}")
        return compressor.accumulate_compress(acc, update, momentum_buffer, momentum,
                                              consume=consume,
                                              hint=self._hints.setdefault(name, []))

    def compress(self, name: str, update: torch.Tensor, compressor: Compressor) -> Message:
        """Accumulate, compress, subtract what is sent; return the message."""
        acc = self.accumulate(name, update)
        msg = compressor(acc)
        _subtract(acc, msg)
        return msg

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self._acc.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor], device: Any = None) -> None:
        self._hints = {}
        self._acc = {
            k: v.detach().to(device=device if device is not None else v.device, dtype=self.dtype)
            .clone()
            for k, v in state.items()
        }


def _subtract(acc: torch.Tensor, msg: Message) -> None:
    """acc −= the message's float32 values; compiled on CPU."""
    if msg.method != "dense" and acc.device.type == "cpu" and acc.is_contiguous() \
            and acc.dtype in (torch.float64, torch.float32):
        if msg.positions.size:
            vals = msg.position_values() if msg.method in ("stc", "topk") else _NO_VALUES
            _add_at(acc.numpy(), msg.positions, vals, np.float32(msg.scale), -1)
        return
    vals = torch.from_numpy(msg.position_values()).to(device=acc.device, dtype=acc.dtype)
    if msg.method == "dense":
        acc.sub_(vals)
    elif msg.positions.size:
        idx = torch.from_numpy(msg.positions).to(acc.device)
        acc.index_add_(0, idx, vals, alpha=-1)


_NO_VALUES = np.empty(0, dtype=np.float32)
_NO_MOMENTUM = np.empty(1, dtype=np.float32)  # placeholder u when there is no momentum
