"""Rate–distortion optimised quantization (RDOQ) against the live DeepCABAC contexts.

Each weight, in scan order, takes the integer level q minimising

    J(q) = F_i · (x_i − q)² + λ · R(q),      x_i = w_i / Δ,

where R(q) is the number of bits q costs under the coder's *current* adaptive contexts (a
−log2 p table lookup per bin, not a trial encoding) and F_i the weight's importance normalised
to mean 1 over the tensor (so λ is dimensionless: λ = 0.1 trades 0.1·Δ² of F-weighted squared
error for one bit). Candidates are the rounded level, its neighbour towards zero, and 0. The
chosen level is then coded for real, so the next decision sees the adapted contexts.
λ = 0 is plain rounding.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..coding.cabac import (
    COST0,
    COST1,
    N_EG_CTX,
    activity,
    bin_cost,
    chunk_by_chunk,
    ctx_layout,
    enc_finish,
    enc_level,
    gt_ctx,
    hash_step,
    init_contexts,
    sig_ctx,
    sign_class,
    warm_table,
)


@njit(cache=True, inline="always")
def level_cost(m, neg, state, a, pc, g, n_act, c_sig, c_sign, c_gt, c_eg, st, cost0, cost1):
    """Bits of a level of magnitude m (sign ``neg``) under the current contexts."""
    ctx = sig_ctx(c_sig, n_act, state, a, pc)
    if m == 0:
        return bin_cost(st, ctx, 0, cost0, cost1)
    c = bin_cost(st, ctx, 1, cost0, cost1) + bin_cost(st, c_sign + pc, neg, cost0, cost1)
    qid = state >> 1
    top = m if m < g else g
    for k in range(1, top + 1):
        c += bin_cost(st, gt_ctx(c_gt, n_act, g, qid, a, k, neg), 1 if m > k else 0,
                      cost0, cost1)
    if m > g:
        v = m - g
        nbits = 0
        while (v >> (nbits + 1)) > 0:
            nbits += 1
        for i in range(nbits + 1):
            c += bin_cost(st, c_eg + min(i, N_EG_CTX - 1), 1 if i < nbits else 0,
                          cost0, cost1)
        c += nbits
    return c


@njit(cache=True, inline="always")
def _eg_cost(v, c_eg, st, cost0, cost1):
    nbits = 0
    while (v >> (nbits + 1)) > 0:
        nbits += 1
    c = float(nbits)
    for i in range(nbits + 1):
        c += bin_cost(st, c_eg + min(i, N_EG_CTX - 1), 1 if i < nbits else 0, cost0, cost1)
    return c


@njit(cache=True, inline="always")
def pair_cost(m, neg, a, pc, g, n_act, c_sig, c_sign, c_gt, c_eg, st, cost0, cost1):
    """Bits of magnitudes m and m − 1 (m ≥ 1) in one pass over the shared |q| > k prefix."""
    ctx = sig_ctx(c_sig, n_act, 0, a, pc)
    base = bin_cost(st, ctx, 1, cost0, cost1) + bin_cost(st, c_sign + pc, neg, cost0, cost1)
    c_m1 = bin_cost(st, ctx, 0, cost0, cost1) if m == 1 else 0.0
    c_m = 0.0
    acc = 0.0
    top = m if m < g else g
    for k in range(1, top + 1):
        ctx = gt_ctx(c_gt, n_act, g, 0, a, k, neg)
        if k == m - 1:
            c_m1 = base + acc + bin_cost(st, ctx, 0, cost0, cost1)
        if k == m:
            c_m = base + acc + bin_cost(st, ctx, 0, cost0, cost1)
        acc += bin_cost(st, ctx, 1, cost0, cost1)
    if m > g:
        c_m = base + acc + _eg_cost(m - g, c_eg, st, cost0, cost1)
        if m - 1 > g:
            c_m1 = base + acc + _eg_cost(m - 1 - g, c_eg, st, cost0, cost1)
    return c_m, c_m1


@njit(cache=True)
def rdoq_chunk(w, sc, fw, use_f, lo, hi, row_len, lam, g, ctx_mode, wt, buf, levels, measure,
               cost0, cost1):
    """Quantize and code x[lo:hi] (x = w/Δ) greedily; levels written to ``levels``.
    Returns (nbytes, checksum, ideal bits)."""
    st = init_contexts(ctx_layout(g, ctx_mode)[5])
    return _rdoq_chunk_kernel(w, sc, fw, use_f, lo, hi, row_len, lam, g, ctx_mode, wt, buf,
                              levels, measure, cost0, cost1, st)


@njit(cache=True, _nrt=False)
def _rdoq_chunk_kernel(w, sc, fw, use_f, lo, hi, row_len, lam, g, ctx_mode, wt, buf, levels,
                       measure, cost0, cost1, st):
    """``rdoq_chunk`` on the fresh contexts ``st``, compiled without reference counting (as
    the coder's kernels, ``coding.cabac`` speed notes)."""
    n_act, c_sig, c_sign, c_gt, c_eg, n_ctx = ctx_layout(g, ctx_mode)
    low = 0
    rng = 0xFFFFFFFF
    cache = -1
    pend = 0
    pos = 0
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
        pc = sign_class(prev)
        xi = w[i] / sc
        neg = 1 if xi < 0 else 0
        ax = -xi if neg else xi
        m = int(np.floor(ax + 0.5))
        if lam > 0.0 and m > 0:
            f = fw[i] if use_f else 1.0
            c_m, c_m1 = pair_cost(m, neg, a, pc, g, n_act, c_sig, c_sign, c_gt, c_eg, st,
                                  cost0, cost1)
            d = ax - m
            bj = f * d * d + lam * c_m
            best = m
            d = ax - (m - 1)
            j = f * d * d + lam * c_m1
            if j < bj:
                bj = j
                best = m - 1
            if m >= 2:
                j = f * ax * ax + lam * bin_cost(st, sig_ctx(c_sig, n_act, 0, a, pc), 0,
                                                 cost0, cost1)
                if j < bj:
                    best = 0
            m = best
        q = -m if neg else m
        levels[i] = q
        low, rng, cache, pend, pos, bits = enc_level(
            q, 0, a, pc, g, n_act, c_sig, c_sign, c_gt, c_eg, st, wt,
            low, rng, cache, pend, pos, buf, measure)
        ideal += bits
        h = hash_step(h, q)
        prev = q
        col += 1
        if col == row_len:
            col = 0
    pos = enc_finish(low, rng, cache, pend, pos, buf)
    return pos, h, ideal


@njit(cache=True, parallel=True, nogil=True)
def rdoq_encode_par(w, sc, fw, use_f, row_len, chunk, lam, g, ctx_mode, sf, ss, buf, offs, nbytes,
                    checks, ideal, levels, measure, cost0, cost1):
    """All chunks of a tensor in parallel (one independent coder per chunk)."""
    nch = offs.size - 1
    n = w.size
    wt = warm_table(sf, ss)
    for c in prange(nch):
        lo = c * chunk
        hi = min(n, lo + chunk)
        nb, h, bits = rdoq_chunk(w, sc, fw, use_f, lo, hi, row_len, lam, g, ctx_mode, wt,
                                 buf[offs[c]:offs[c + 1]], levels, measure, cost0, cost1)
        nbytes[c] = nb
        checks[c] = h
        ideal[c] = bits


def rdoq_encode(w: np.ndarray, sc: float, fw: np.ndarray | None, row_len: int, chunk: int,
                lam: float, g: int, ctx_mode: int, shifts: tuple[int, int], buf: np.ndarray,
                offs: np.ndarray, measure: bool = False):
    """Run RDOQ + coding on every chunk. Returns (levels, nbytes, checksums, ideal bits)."""
    nch = offs.size - 1
    nbytes = np.zeros(nch, dtype=np.int64)
    checks = np.zeros(nch, dtype=np.int64)
    ideal = np.zeros(nch, dtype=np.float64)
    levels = np.zeros(w.size, dtype=np.int32)
    use_f = fw is not None
    f = fw if use_f else np.ones(1, dtype=np.float32)
    with chunk_by_chunk():
        rdoq_encode_par(w, np.float32(sc), f, use_f, row_len, chunk, float(lam), g, ctx_mode,
                        shifts[0], shifts[1], buf, offs, nbytes, checks, ideal, levels, measure,
                        COST0, COST1)
    return levels, nbytes, checks, ideal
