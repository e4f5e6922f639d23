"""Binary arithmetic coder with dual-rate adaptive contexts, and DeepCABAC binarization.

Coder
-----
A byte-oriented range coder (32-bit ``range``, 33-bit ``low`` with carry propagation through
a cached byte and a count of pending 0xFF bytes). A context-coded bin with probability
p = P(bin = 1) (15-bit fixed point) splits the range at ``bound = (range >> 15) * p``; a bypass
bin halves it. Renormalisation is byte-wise (range kept ≥ 2^24). Termination picks the value
inside the final interval with the most trailing zero bytes and drops those bytes; the decoder
reads zeros past the end (at most 4, anything more means a truncated chunk).

Each context keeps two probability estimators with different adaptation rates,
``p_f += ((bin << 22) - p_f) >> s_fast`` and ``p_s += ((bin << 22) - p_s) >> s_slow`` (22-bit
states, so a slow estimator can reach small probabilities), and codes with their mean rounded
to 15 bits and clamped to [1, 32767] (no interval is ever empty) — the fast one tracks local
statistics, the slow one averages out noise (SPEC §2.3).

Binarization of a level q (DeepCABAC)
-------------------------------------
Levels are scanned row by row (row = the first dimension of the tensor). For each level:

1. ``sig`` (q ≠ 0): context from the previous level of the row (zero / negative / positive),
   the dependent-quantization state, and (``ctx_mode=1``) the neighbourhood activity;
2. ``sign``: context from the previous level's sign class;
3. ``|q| > k`` for k = 1..g, stopping at the first 0; 2 contexts per k (by sign), ×2 by
   the dependent quantizer in use, ×activity class;
4. if |q| > g: r = |q| − g − 1 as exp-Golomb order 0 — the unary prefix context-coded by
   position, the suffix bypass-coded.

``ctx_mode=0`` is the reference layout; ``ctx_mode=1`` adds an activity class
a = class(|prev| + |above|) with ``above`` the level at the same column in the previous row
(both are already decoded), splitting the sig and ``|q| > k`` contexts by a ∈ {0..4}.
With dependent quantization (``dq``) the coded value is the quantization index k of the
current quantizer; the 4-state machine (state' = T[state][k & 1]) selects the sig contexts.

Streams are cut into chunks of ``chunk`` elements, each coded independently (contexts and
state reset), which lets encode and decode run one chunk per core (numba ``prange``, chunks
handed out one at a time; the codec evens out the chunk count with ``balanced_chunk``).

Speed notes (all bit-exact with the straightforward formulation): the context states live in
one flat int64 array, 4 slots per context, indexed with unsigned integers (numba skips its
negative-index wrap-around); the warm-up shifts come from a per-stream table by use count;
the interval update is branch-free (masks); the range is renormalised byte-wise. The
per-chunk loops run in kernels compiled with ``_nrt=False`` (numba without its reference
counting) on state their NRT-compiled wrappers allocate: numba inlines each ``enc_ctx``
into the loop with an incref/decref of every array it takes, its pruning pass left them in
place, and those atomic calls cost more than the coding (encode on DQ-like levels 59 →
31 ns per weight, one core, bit-identical output).

Stream layout (little-endian)::

    b"DZCB" | u8 version | u8 flags (bit0 = dq) | u8 ctx_mode | u8 g | u8 s_fast | u8 s_slow
    | u16 reserved | f64 step | u64 n | u64 row_len | u64 chunk | u32 n_chunks
    | u32 nbytes[n_chunks] | u32 checksum[n_chunks] | u32 crc32(header + tables) | chunk bytes ...

``checksum`` is an FNV-1a style hash of the chunk's reconstructed integer levels, so a corrupted
chunk that still decodes is detected; the CRC32 covers the header (step size included) and the
chunk table.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numba
import numpy as np
from numba import njit, prange

from ..codec import CorruptPayload, InvalidOption

MAGIC = b"DZCB"
VERSION = 1
HEADER = struct.Struct("<4sBBBBBBHdQQQI")

PROB_BITS = 15
PROB_ONE = 1 << PROB_BITS
#: estimator states keep more precision than the coder, so slow estimators can reach small p
STATE_BITS = 22
STATE_ONE = 1 << STATE_BITS
TOP = 1 << 24
#: largest level magnitude (|k| for dependent quantization, |q| otherwise) a stream may hold
MAX_LEVEL = (1 << 29) - 1
#: exp-Golomb prefix contexts (positions past the last share it)
N_EG_CTX = 18
N_ACT = 5
#: default adaptation shifts of the fast / slow estimators (measured on MiniLM, see benchmarks)
DEFAULT_SHIFTS = (7, 11)
DEFAULT_G = 16
#: unary flags when levels are large: once mean |w|/Δ ≥ FINE_LEVEL_SCALE most |q| exceed any g,
#: and each "|q| > k" flag is nearly always 1 — a context-coded bin that costs decode time but
#: few bits. On all-MiniLM-L6-v2, 2 cores (benchmarks/deepcabac_speed.py, ``g_ablation``):
#: against g = 16 everywhere, decode ×1.27 for +0.24% size at qp −38 (mean |q| ≈ 35), ×1.05
#: for +0.37% at qp −32; levels of mean |q| ≈ 4 (qp −26) moved neither, so they keep DEFAULT_G.
FINE_G = 5
FINE_LEVEL_SCALE = 8.0
DEFAULT_CHUNK = 1 << 15
#: warm-up shift of a context used c times: ⌊log2(c + 2)⌋ (c saturates at WARM_MAX)
WARM_MAX = 4096
WARM = np.floor(np.log2(np.arange(WARM_MAX + 1) + 2.0)).astype(np.int64)

#: dependent quantization: next state = DQ_TRANS[state, k & 1]; quantizer = state >> 1
DQ_TRANS = np.array([[0, 2], [2, 0], [1, 3], [3, 1]], dtype=np.int64)


# ----------------------------------------------------------------------------- contexts


@njit(cache=True, inline="always")
def ctx_layout(g, ctx_mode):
    """Offsets of the context groups: (n_act, sig, sign, gt, eg, n_ctx)."""
    n_act = N_ACT if ctx_mode == 1 else 1
    sig = 0
    sign = sig + 4 * n_act * 3
    gt = sign + 3
    eg = gt + 2 * n_act * max(g, 1) * 2
    return n_act, sig, sign, gt, eg, eg + N_EG_CTX


@njit(cache=True, inline="always")
def activity(prev_abs, above_abs):
    """Neighbourhood activity class a ∈ {0..4} of |prev| + |above| (log-spaced)."""
    t = prev_abs + above_abs
    if t == 0:
        return 0
    if t <= 2:
        return 1
    if t <= 6:
        return 2
    if t <= 14:
        return 3
    return 4


@njit(cache=True, inline="always")
def sign_class(prev):
    """0 for a zero previous level, 1 for a negative, 2 for a positive one — branch-free:
    the trellis evaluates it per state on levels that are random in sign."""
    return (prev != 0) + (prev > 0)


@njit(cache=True, inline="always")
def sig_ctx(sig0, n_act, state, a, pc):
    return sig0 + (state * n_act + a) * 3 + pc


@njit(cache=True, inline="always")
def gt_ctx(gt0, n_act, g, qid, a, k, neg):
    """Context of the flag |q| > k (k = 1..g)."""
    return gt0 + (((qid * n_act + a) * g) + (k - 1)) * 2 + neg


_U1 = np.uint64(1)
_U2 = np.uint64(2)
_U3 = np.uint64(3)
#: slots per context in the flat state array: fast estimator, slow estimator, use count, and
#: the coding probability their mean gives (``prob``)
CTX_SLOTS = 4


@njit(cache=True)
def init_contexts(n_ctx):
    """Fresh estimators: p = 1/2 for every context, fast and slow, a use count, and the
    coding probability of that pair.

    One flat int64 array, ``CTX_SLOTS`` per context (fast state, slow state, count, p):
    flat indexing keeps the per-bin address arithmetic short."""
    st = np.zeros(n_ctx * CTX_SLOTS, dtype=np.int64)
    for c in range(n_ctx):
        st[c * CTX_SLOTS] = STATE_ONE // 2
        st[c * CTX_SLOTS + 1] = STATE_ONE // 2
        st[c * CTX_SLOTS + 3] = _mean_prob(STATE_ONE // 2, STATE_ONE // 2)
    return st


#: use counts saturate here: 2^12 − 2, from where even a 12-bit shift is final (shifts ≤ 12)
COUNT_CAP = (1 << 12) - 2


@njit(cache=True)
def warm_table(s_fast, s_slow):
    """Effective shifts by use count c, flattened as [2c] fast, [2c + 1] slow:
    min(s, ⌊log2(c + 2)⌋). From c = 2^max(s) − 2 on both are final, so a count saturating at
    ``COUNT_CAP`` gives the same shifts as one saturating anywhere later."""
    wt = np.empty(2 * (COUNT_CAP + 1), dtype=np.int32)
    for c in range(COUNT_CAP + 1):
        w = WARM[c]
        wt[2 * c] = s_fast if s_fast < w else w
        wt[2 * c + 1] = s_slow if s_slow < w else w
    return wt


@njit(cache=True, inline="always")
def update_ctx(st, ctx, bit, wt):
    """Move both estimators towards ``bit``. A young context adapts faster: its shift is
    min(s, ⌊log2(count + 2)⌋) (``warm_table``), so the first bins average like a counter
    (≈ 1/n) instead of paying the slow estimator's long warm-up at every chunk start.
    (Unsigned indices: numba then skips its negative-index wrap-around on every access.)"""
    j = np.uint64(ctx * CTX_SLOTS)
    c = st[j + _U2]
    w = np.uint64(2 * c)
    sf = wt[w]
    ss = wt[w + _U1]
    if c < COUNT_CAP:
        st[j + _U2] = c + 1
    target = bit << STATE_BITS
    f = st[j]
    s = st[j + _U1]
    f += (target - f) >> sf
    s += (target - s) >> ss
    st[j] = f
    st[j + _U1] = s
    st[j + _U3] = _mean_prob(f, s)


@njit(cache=True, inline="always")
def _mean_prob(f, s):
    """P(1) in 15 bits from the two estimators: their mean, at least 1.

    The states stay in [0, 2^22 − 1] (a step moves at most to within 1 of the target and
    never past it), so the mean is ≤ 32767 and only the lower clamp can act."""
    p = (f + s) >> (STATE_BITS + 1 - PROB_BITS)
    return p if p > 0 else 1


@njit(cache=True, inline="always")
def prob(st, ctx):
    """Coding probability P(1) of context ``ctx`` (``_mean_prob`` of its estimators, kept
    up to date by ``update_ctx``): one load on the decoder's serial bin chain instead of
    two loads, an add, a shift and a clamp."""
    return st[np.uint64(ctx * CTX_SLOTS) + _U3]


def _cost_tables():
    """−log2 P(bin) in bits, indexed by p >> 5 (1024 cells, cell centres)."""
    centres = (np.arange(1024, dtype=np.float64) + 0.5) * 32.0 / PROB_ONE
    c1 = -np.log2(centres)
    c0 = -np.log2(1.0 - centres)
    return c0.astype(np.float32), c1.astype(np.float32)


COST0, COST1 = _cost_tables()


@njit(cache=True, inline="always")
def bin_cost(st, ctx, bit, cost0, cost1):
    """Bits the coder would spend on ``bit`` in context ``ctx`` right now (table lookup)."""
    p = prob(st, ctx)
    if bit:
        return cost1[p >> 5]
    return cost0[p >> 5]


# ----------------------------------------------------------------------------- encoder


@njit(cache=True, inline="always")
def _shift_low(low, cache, pend, pos, buf):
    """Move the top byte of ``low`` out, resolving a carry into the cached/pending bytes."""
    if low < 0xFF000000 or low >= 0x100000000:
        carry = low >> 32
        if cache >= 0:
            if pos < buf.size:
                buf[pos] = (cache + carry) & 0xFF
            pos += 1
        while pend > 0:
            if pos < buf.size:
                buf[pos] = (0xFF + carry) & 0xFF
            pos += 1
            pend -= 1
        cache = (low >> 24) & 0xFF
    else:
        pend += 1
    low = (low & 0x00FFFFFF) << 8
    return low, cache, pend, pos


@njit(cache=True, inline="always")
def enc_bin(bit, p, low, rng, cache, pend, pos, buf):
    """Code one bin of probability p = P(1) (15-bit)."""
    bound = (rng >> PROB_BITS) * p
    # branch-free with masks: the bit is unpredictable by design
    keep = bit - 1  # 0 when bit = 1, all ones when bit = 0
    low += bound & keep
    rng = (bound & -bit) | ((rng - bound) & keep)
    while rng < TOP:
        rng <<= 8
        low, cache, pend, pos = _shift_low(low, cache, pend, pos, buf)
    return low, rng, cache, pend, pos


@njit(cache=True, inline="always")
def enc_ctx(bit, st, ctx, wt, low, rng, cache, pend, pos, buf):
    """Code one bin in context ``ctx`` and adapt the context."""
    low, rng, cache, pend, pos = enc_bin(bit, prob(st, ctx), low, rng, cache, pend, pos, buf)
    update_ctx(st, ctx, bit, wt)
    return low, rng, cache, pend, pos


@njit(cache=True, inline="always")
def enc_bypass(bit, low, rng, cache, pend, pos, buf):
    """Code one equiprobable bin."""
    rng >>= 1
    if bit:
        low += rng
    while rng < TOP:
        rng <<= 8
        low, cache, pend, pos = _shift_low(low, cache, pend, pos, buf)
    return low, rng, cache, pend, pos


@njit(cache=True)
def enc_finish(low, rng, cache, pend, pos, buf):
    """Terminate: pick the value in [low, low+range) with most trailing zero bytes, flush,
    and drop those zero bytes (the decoder reads zeros past the end). Returns the length."""
    hi = low + rng - 1
    for k in (32, 24, 16, 8):
        mask = (1 << k) - 1
        v = (low + mask) & ~mask
        if v <= hi:
            low = v
            break
    for _ in range(5):
        low, cache, pend, pos = _shift_low(low, cache, pend, pos, buf)
    trimmed = 0
    while trimmed < 4 and pos > 0 and pos <= buf.size and buf[pos - 1] == 0:
        pos -= 1
        trimmed += 1
    return pos


@njit(cache=True, inline="always")
def _ideal(p, bit):
    if bit:
        return -math.log2(p / PROB_ONE)
    return -math.log2(1.0 - p / PROB_ONE)


@njit(cache=True, inline="always")
def enc_level(q, state, a, pc, g, n_act, c_sig, c_sign, c_gt, c_eg, st, wt,
              low, rng, cache, pend, pos, buf, measure):
    """Binarize and code one level; returns the coder state and the ideal bits spent
    (Σ −log2 p of the context-coded bins + 1 per bypass bin) when ``measure``."""
    ideal = 0.0
    ctx = sig_ctx(c_sig, n_act, state, a, pc)
    nz = 1 if q != 0 else 0
    if measure:
        ideal += _ideal(prob(st, ctx), nz)
    low, rng, cache, pend, pos = enc_ctx(nz, st, ctx, wt, low, rng, cache, pend, pos, buf)
    if nz == 0:
        return low, rng, cache, pend, pos, ideal
    neg = 1 if q < 0 else 0
    m = -q if neg else q
    ctx = c_sign + pc
    if measure:
        ideal += _ideal(prob(st, ctx), neg)
    low, rng, cache, pend, pos = enc_ctx(neg, st, ctx, wt, low, rng, cache, pend, pos, buf)
    ctx = gt_ctx(c_gt, n_act, g, state >> 1, a, 1, neg)
    top = m - 1 if m <= g else g
    # |q| > k for k = 1..top are ones; the flag at k = m (when m ≤ g) is the terminating zero
    for _ in range(top):
        if measure:
            ideal += _ideal(prob(st, ctx), 1)
        low, rng, cache, pend, pos = enc_ctx(1, st, ctx, wt, low, rng, cache, pend, pos, buf)
        ctx += 2
    if m <= g:
        if measure:
            ideal += _ideal(prob(st, ctx), 0)
        low, rng, cache, pend, pos = enc_ctx(0, st, ctx, wt, low, rng, cache, pend, pos, buf)
        return low, rng, cache, pend, pos, ideal
    # exp-Golomb order 0 of r = m - g - 1: prefix L ones + one zero, suffix L bits of r + 1
    v = m - g
    nbits = 0
    while (v >> (nbits + 1)) > 0:
        nbits += 1
    for i in range(nbits + 1):
        b = 1 if i < nbits else 0
        ctx = c_eg + min(i, N_EG_CTX - 1)
        if measure:
            ideal += _ideal(prob(st, ctx), b)
        low, rng, cache, pend, pos = enc_ctx(b, st, ctx, wt, low, rng, cache, pend, pos, buf)
    for i in range(nbits - 1, -1, -1):
        low, rng, cache, pend, pos = enc_bypass((v >> i) & 1, low, rng, cache, pend, pos, buf)
    if measure:
        ideal += nbits
    return low, rng, cache, pend, pos, ideal


@njit(cache=True, inline="always")
def recon_int(k, state):
    """Integer reconstruction r (value = r·Δ): k without DQ (state < 0);
    2k − sgn(k)·(state >> 1) with (branch-free)."""
    if state < 0:
        return k
    sgn = (1 if k > 0 else 0) - (1 if k < 0 else 0)
    return 2 * k - sgn * (state >> 1)


#: DQ_TRANS packed 2 bits per entry, entry (state << 1) | parity: no table load per weight
DQ_PACKED = sum(int(DQ_TRANS.reshape(-1)[i]) << (2 * i) for i in range(8))


@njit(cache=True, inline="always")
def dq_next(state, k):
    """Next dependent-quantization state T[state][k & 1]."""
    return (DQ_PACKED >> ((((state << 1) | (k & 1))) << 1)) & 3


@njit(cache=True, inline="always")
def hash_step(h, r):
    return ((h ^ (r & 0xFFFFFFFF)) * 16777619) & 0xFFFFFFFF


@njit(cache=True)
def encode_levels_chunk(levels, lo, hi, row_len, g, ctx_mode, dq, wt, buf, measure):
    """Code levels[lo:hi] (one chunk, fresh contexts). Returns (nbytes, checksum, ideal bits);
    nbytes > buf.size means the buffer was too small (nothing valid was written)."""
    st = init_contexts(ctx_layout(g, ctx_mode)[5])
    return _encode_chunk_kernel(levels, lo, hi, row_len, g, ctx_mode, dq, wt, buf, measure, st)


@njit(cache=True, _nrt=False)
def _encode_chunk_kernel(levels, lo, hi, row_len, g, ctx_mode, dq, wt, buf, measure, st):
    """``encode_levels_chunk`` on the fresh contexts ``st``, compiled without reference
    counting (module docstring, speed notes); the loop inlined twice, the context mode a
    constant in each copy (as the decoder's)."""
    if ctx_mode == 0:
        return _encode_chunk_body(levels, lo, hi, row_len, g, 0, dq, wt, buf, measure, st)
    return _encode_chunk_body(levels, lo, hi, row_len, g, 1, dq, wt, buf, measure, st)


@njit(cache=True, inline="always")
def _encode_chunk_body(levels, lo, hi, row_len, g, ctx_mode, dq, wt, buf, measure, st):
    n_act, c_sig, c_sign, c_gt, c_eg, n_ctx = ctx_layout(g, ctx_mode)
    low = 0
    rng = 0xFFFFFFFF
    cache = -1
    pend = 0
    pos = 0
    state = 0
    h = 2166136261
    ideal = 0.0
    prev = 0
    col = lo % row_len
    for i in range(lo, hi):
        if col == 0:
            prev = 0
        a = 0
        if ctx_mode == 1:
            above = levels[i - row_len] if i - row_len >= lo else 0
            a = activity(abs(prev), abs(above))
        q = levels[i]
        low, rng, cache, pend, pos, bits = enc_level(
            q, state, a, sign_class(prev), g, n_act, c_sig, c_sign, c_gt, c_eg, st, wt,
            low, rng, cache, pend, pos, buf, measure)
        ideal += bits
        if dq:
            h = hash_step(h, recon_int(q, state))
            state = dq_next(state, q)
        else:
            h = hash_step(h, q)
        prev = q
        col += 1
        if col == row_len:
            col = 0
    pos = enc_finish(low, rng, cache, pend, pos, buf)
    return pos, h, ideal


# ----------------------------------------------------------------------------- decoder


@njit(cache=True, inline="always")
def dec_ctx(st, ctx, wt, code, rng, pos, data, end):
    """Decode one bin in context ``ctx`` and adapt the context."""
    p = prob(st, ctx)
    bound = (rng >> PROB_BITS) * p
    bit = 1 if code < bound else 0
    # branch-free interval update with masks (the bit is unpredictable by design)
    keep = bit - 1  # 0 when bit = 1, all ones when bit = 0
    code -= bound & keep
    rng = (bound & -bit) | ((rng - bound) & keep)
    while rng < TOP:
        rng <<= 8
        b = data[pos] if pos < end else 0
        pos += 1
        code = (code << 8) | b
    update_ctx(st, ctx, bit, wt)
    return bit, code, rng, pos


@njit(cache=True, inline="always")
def dec_bypass(code, rng, pos, data, end):
    rng >>= 1
    bit = 1 if code >= rng else 0
    code = code - rng if bit else code
    while rng < TOP:
        rng <<= 8
        code = (code << 8) | (data[pos] if pos < end else 0)
        pos += 1
    return bit, code, rng, pos


@njit(cache=True, inline="always")
def _decode_chunk_body(data, start, end, lo, hi, row_len, g, ctx_mode, dq, wt, out, outf,
                        scale, to_float, st, ring):
    """Decode one chunk into out[lo:hi] (integer reconstructions r), or straight to floats
    outf[lo:hi] = r·scale when ``to_float`` (saves a pass), from the fresh contexts ``st``
    (``ring``: the zeroed previous-row buffer of ``_ring``). Returns (status, checksum):
    status 0 ok, 1 bad exp-Golomb prefix / level too large, 2 bad byte count."""
    n_act, c_sig, c_sign, c_gt, c_eg, n_ctx = ctx_layout(g, ctx_mode)
    pos = start
    code = 0
    for _ in range(4):
        b = data[pos] if pos < end else 0
        pos += 1
        code = (code << 8) | b
    rng = 0xFFFFFFFF
    if code >= rng:
        return 2, 0
    state = 0
    h = 2166136261
    prev = 0
    col = lo % row_len
    has_above = ctx_mode == 1 and row_len < hi - lo
    for i in range(lo, hi):
        if col == 0:
            prev = 0
        a = 0
        if ctx_mode == 1:
            above = ring[col] if (has_above and i - row_len >= lo) else 0
            a = activity(abs(prev), abs(above))
        pc = sign_class(prev)
        bit, code, rng, pos = dec_ctx(st, sig_ctx(c_sig, n_act, state, a, pc), wt, code, rng,
                                      pos, data, end)
        q = 0
        if bit:
            neg, code, rng, pos = dec_ctx(st, c_sign + pc, wt, code, rng, pos, data, end)
            ctx = gt_ctx(c_gt, n_act, g, state >> 1, a, 1, neg)
            m = 1
            # unary part: |q| > m flags until the first zero or m = g + 1
            while m <= g:
                more, code, rng, pos = dec_ctx(st, ctx, wt, code, rng, pos, data, end)
                if more == 0:
                    break
                m += 1
                ctx += 2
            if m > g:
                nbits = 0
                while True:
                    b, code, rng, pos = dec_ctx(st, c_eg + min(nbits, N_EG_CTX - 1), wt, code,
                                                rng, pos, data, end)
                    if b == 0:
                        break
                    nbits += 1
                    if nbits > 29:
                        return 1, 0
                v = 1
                for _ in range(nbits):
                    b, code, rng, pos = dec_bypass(code, rng, pos, data, end)
                    v = (v << 1) | b
                m = v + g
                if m > MAX_LEVEL:
                    return 1, 0
            q = -m if neg else m
        if has_above:
            ring[col] = q
        if dq:
            r = recon_int(q, state)
            state = dq_next(state, q)
        else:
            r = q
        if to_float:
            outf[i] = np.float32(r) * scale
        else:
            out[i] = r
        h = hash_step(h, r)
        prev = q
        col += 1
        if col == row_len:
            col = 0
    over = pos - end
    if over < 0 or over > 4:
        return 2, h
    return 0, h


@njit(cache=True)
def decode_levels_chunk(data, start, end, lo, hi, row_len, g, ctx_mode, dq, wt, out, outf,
                        scale, to_float):
    """Decode one chunk into out[lo:hi] (integer reconstructions r), or straight to floats
    outf[lo:hi] = r·scale when ``to_float`` (saves a pass). Returns (status, checksum):
    status 0 ok, 1 bad exp-Golomb prefix / level too large, 2 bad byte count."""
    st = init_contexts(ctx_layout(g, ctx_mode)[5])
    return _decode_chunk_kernel(data, start, end, lo, hi, row_len, g, ctx_mode, dq, wt, out,
                                outf, scale, to_float, st, _ring(row_len, lo, hi, ctx_mode))


@njit(cache=True)
def _ring(row_len, lo, hi, ctx_mode):
    """The previous row's coded values for ctx_mode 1 (out holds reconstructions, not k):
    a zeroed row, only when a row fits in the chunk (else ``above`` is never available)."""
    return np.zeros(row_len if (ctx_mode == 1 and row_len < hi - lo) else 1, dtype=np.int32)


@njit(cache=True, _nrt=False)
def _decode_chunk_kernel(data, start, end, lo, hi, row_len, g, ctx_mode, dq, wt, out, outf,
                         scale, to_float, st, ring):
    """``decode_levels_chunk`` on preallocated state, compiled without reference counting
    (module docstring, speed notes). The loop is inlined twice, with the context mode a
    constant in each copy, so the plain layout (mode 0) carries none of the neighbourhood
    bookkeeping."""
    if ctx_mode == 0:
        return _decode_chunk_body(data, start, end, lo, hi, row_len, g, 0, dq, wt, out, outf,
                                  scale, to_float, st, ring)
    return _decode_chunk_body(data, start, end, lo, hi, row_len, g, 1, dq, wt, out, outf,
                              scale, to_float, st, ring)


# ----------------------------------------------------------------------------- parallel drivers


@njit(cache=True, parallel=True, nogil=True)
def _encode_levels_par(levels, row_len, chunk, g, ctx_mode, dq, sf, ss, buf, offs, nbytes,
                       checks, ideal, measure):
    nch = offs.size - 1
    n = levels.size
    wt = warm_table(sf, ss)
    for c in prange(nch):
        lo = c * chunk
        hi = min(n, lo + chunk)
        nb, h, bits = encode_levels_chunk(levels, lo, hi, row_len, g, ctx_mode, dq, wt,
                                          buf[offs[c]:offs[c + 1]], measure)
        nbytes[c] = nb
        checks[c] = h
        ideal[c] = bits


@njit(cache=True, parallel=True, nogil=True)
def _decode_par(data, starts, ends, n, row_len, chunk, g, ctx_mode, dq, sf, ss, checks, out,
                outf, scale, to_float, status):
    nch = starts.size
    wt = warm_table(sf, ss)
    for c in prange(nch):
        lo = c * chunk
        hi = min(n, lo + chunk)
        st, h = decode_levels_chunk(data, starts[c], ends[c], lo, hi, row_len, g, ctx_mode, dq,
                                    wt, out, outf, scale, to_float)
        if st == 0 and h != checks[c]:
            st = 3
        status[c] = st


# ----------------------------------------------------------------------------- python API


@contextmanager
def chunk_by_chunk() -> Iterator[None]:
    """Run the enclosed ``prange`` drivers with dynamic scheduling, one chunk per hand-out:
    the chunks' cost varies with the weights' statistics (e.g. frequent vs rare token rows of
    an embedding), so numba's default static split into one contiguous block per thread can
    leave a core idle at the end."""
    old = numba.set_parallel_chunksize(1)
    try:
        yield
    finally:
        numba.set_parallel_chunksize(old)



@dataclass(frozen=True)
class StreamParams:
    """Everything the decoder needs besides the chunk bytes (all stored in the header)."""

    n: int
    row_len: int
    step: float = 1.0
    g: int = DEFAULT_G
    ctx_mode: int = 0
    dq: bool = False
    chunk: int = DEFAULT_CHUNK
    shifts: tuple[int, int] = DEFAULT_SHIFTS

    @property
    def n_chunks(self) -> int:
        return max(1, -(-self.n // self.chunk)) if self.n else 0

    def validate(self) -> None:
        if not 0 <= self.g <= 30:
            raise InvalidOption(f"g must be in 0..30, got {self.g}")
        if self.ctx_mode not in (0, 1):
            raise InvalidOption(f"ctx_mode must be 0 or 1, got {self.ctx_mode}")
        sf, ss = self.shifts
        if not (1 <= sf <= 12 and 1 <= ss <= 12):
            raise InvalidOption(f"adaptation shifts must be in 1..12, got {self.shifts}")
        if self.chunk < 1 or self.chunk > (1 << 40):
            raise InvalidOption(f"chunk size must be >= 1, got {self.chunk}")
        if self.n < 0 or self.row_len < 1:
            raise InvalidOption(f"bad stream geometry n={self.n} row_len={self.row_len}")
        if not (math.isfinite(self.step) and self.step > 0):
            raise InvalidOption(f"step must be a positive finite number, got {self.step}")


def auto_g(mean_abs_level: float) -> int:
    """Unary length g for levels of mean magnitude ``mean_abs_level`` = mean |w| / Δ."""
    return FINE_G if mean_abs_level >= FINE_LEVEL_SCALE else DEFAULT_G


def row_length(shape: tuple[int, ...]) -> int:
    """Elements per row: product of all but the first dimension (a 1-D tensor is one row)."""
    if len(shape) <= 1:
        return max(1, int(shape[0]) if shape else 1)
    return max(1, int(np.prod(shape[1:], dtype=np.int64)))


def balanced_chunk(n: int, chunk: int) -> int:
    """Chunk length actually used for ``n`` values with nominal length ``chunk``: the count
    ⌈n / chunk⌉ rounded up to an even number (when > 1) and the values spread evenly, so the
    chunks — one independent coder each — split evenly over 2 cores (a 384×384 matrix is 6
    chunks of 24 576, not 4 of 32 768 and a fifth of 16 384 that leaves one core idle)."""
    if n <= chunk:
        return chunk
    nch = -(-n // chunk)
    nch += nch & 1
    return -(-n // nch)


def alloc_chunks(n: int, chunk: int, bytes_per_elem: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """A flat output buffer and per-chunk offsets sized for ``bytes_per_elem`` per element."""
    nch = max(1, -(-n // chunk)) if n else 0
    sizes = np.empty(nch, dtype=np.int64)
    for c in range(nch):
        m = min(n, (c + 1) * chunk) - c * chunk
        sizes[c] = int(m * bytes_per_elem) + 64
    offs = np.zeros(nch + 1, dtype=np.int64)
    np.cumsum(sizes, out=offs[1:])
    return np.empty(int(offs[-1]), dtype=np.uint8), offs


def pack_stream(params: StreamParams, buf: np.ndarray, offs: np.ndarray, nbytes: np.ndarray,
                checks: np.ndarray) -> bytes:
    """Header + chunk table + the used part of each chunk buffer."""
    if nbytes.size and int(nbytes.max()) >= 1 << 32:
        raise InvalidOption("a chunk's stream exceeds 4 GiB: use a smaller chunk size")
    sf, ss = params.shifts
    head = HEADER.pack(MAGIC, VERSION, 1 if params.dq else 0, params.ctx_mode, params.g, sf, ss,
                       0, float(params.step), params.n, params.row_len, params.chunk,
                       params.n_chunks)
    tables = nbytes.astype("<u4").tobytes() + checks.astype("<u4").tobytes()
    parts = [head, tables, struct.pack("<I", zlib.crc32(head + tables))]
    for c in range(nbytes.size):
        parts.append(buf[offs[c]:offs[c] + nbytes[c]].tobytes())
    return b"".join(parts)


def encode_levels(levels: np.ndarray, params: StreamParams, measure: bool = False
                  ) -> tuple[bytes, float]:
    """Losslessly code integer levels (k's when ``params.dq``). Returns (stream, ideal bits):
    ideal = Σ −log2 p over the context-coded bins + the bypass bins, the adaptive-model ideal."""
    params.validate()
    lv = np.ascontiguousarray(levels, dtype=np.int32).reshape(-1)
    if lv.size != params.n:
        raise InvalidOption(f"{lv.size} levels but the stream says {params.n}")
    if lv.size and int(np.abs(lv.astype(np.int64)).max()) > MAX_LEVEL:
        raise InvalidOption(f"level magnitude exceeds {MAX_LEVEL}")
    per = 2.0
    while True:
        buf, offs = alloc_chunks(params.n, params.chunk, per)
        nch = offs.size - 1
        nbytes = np.zeros(nch, dtype=np.int64)
        checks = np.zeros(nch, dtype=np.int64)
        ideal = np.zeros(nch, dtype=np.float64)
        sf, ss = params.shifts
        with chunk_by_chunk():
            _encode_levels_par(lv, params.row_len, params.chunk, params.g, params.ctx_mode,
                               params.dq, sf, ss, buf, offs, nbytes, checks, ideal, measure)
        if np.all(nbytes <= np.diff(offs)):
            return pack_stream(params, buf, offs, nbytes, checks), float(ideal.sum())
        per = float(np.max(nbytes / np.maximum(np.diff(offs) - 64, 1))) * per + 1.0


def parse_stream(data: bytes | memoryview | np.ndarray) -> tuple[StreamParams, np.ndarray,
                                                                  np.ndarray, np.ndarray,
                                                                  np.ndarray]:
    """Validate the header and chunk table. Returns (params, bytes, starts, ends, checksums)."""
    raw = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    if raw.size < HEADER.size:
        raise CorruptPayload(f"DeepCABAC stream truncated: {raw.size} bytes, header needs "
                             f"{HEADER.size}")
    (magic, version, flags, ctx_mode, g, sf, ss, _res, step, n, row_len, chunk,
     nch) = HEADER.unpack(raw[:HEADER.size].tobytes())
    if magic != MAGIC:
        raise CorruptPayload("not a DeepCABAC stream (bad magic)")
    if version != VERSION:
        raise CorruptPayload(f"unsupported DeepCABAC stream version {version}")
    if flags & ~1 or _res != 0:
        raise CorruptPayload(f"unknown DeepCABAC flags {flags:#x} / reserved field {_res}")
    params = StreamParams(n=n, row_len=row_len, step=step, g=g, ctx_mode=ctx_mode,
                          dq=bool(flags & 1), chunk=chunk, shifts=(sf, ss))
    try:
        params.validate()
    except InvalidOption as exc:
        raise CorruptPayload(f"bad DeepCABAC header: {exc}") from None
    if nch != params.n_chunks:
        raise CorruptPayload(f"DeepCABAC header: {nch} chunks, expected {params.n_chunks}")
    table_end = HEADER.size + 8 * nch
    if raw.size < table_end + 4:
        raise CorruptPayload("DeepCABAC stream truncated in its chunk table")
    crc = int(raw[table_end:table_end + 4].view("<u4")[0])
    if crc != zlib.crc32(raw[:table_end].tobytes()):
        raise CorruptPayload("DeepCABAC header checksum mismatch")
    nbytes = raw[HEADER.size:HEADER.size + 4 * nch].view("<u4").astype(np.int64)
    checks = raw[HEADER.size + 4 * nch:table_end].view("<u4").astype(np.int64)
    table_end += 4
    ends = table_end + np.cumsum(nbytes)
    starts = ends - nbytes
    total = int(ends[-1]) if nch else table_end
    if total != raw.size:
        raise CorruptPayload(f"DeepCABAC stream is {raw.size} bytes, its chunk table says "
                             f"{total}")
    return params, raw, starts, ends, checks


def decode_levels(data: bytes | memoryview | np.ndarray, as_float: bool = False
                  ) -> tuple[StreamParams, np.ndarray]:
    """Decode a stream to its integer reconstructions r (value = r·step), int32, flat — or,
    with ``as_float``, to the float32 values r·step directly."""
    params, raw, starts, ends, checks = parse_stream(data)
    n = params.n
    out = np.empty(0 if as_float else n, dtype=np.int32)
    outf = np.empty(n if as_float else 0, dtype=np.float32)
    if n == 0:
        return params, outf if as_float else out
    status = np.zeros(starts.size, dtype=np.int64)
    sf, ss = params.shifts
    with chunk_by_chunk():
        _decode_par(raw, starts, ends, n, params.row_len, params.chunk, params.g,
                    params.ctx_mode, params.dq, sf, ss, checks, out, outf,
                    np.float32(params.step), as_float, status)
    bad = np.flatnonzero(status)
    if bad.size:
        c = int(bad[0])
        why = {1: "invalid level code", 2: "chunk length does not match its content",
               3: "checksum mismatch"}[int(status[c])]
        raise CorruptPayload(f"DeepCABAC chunk {c} of {status.size} is corrupt: {why}")
    return params, outf if as_float else out
