"""Dependent (trellis-coded) quantization for DeepCABAC.

Two interleaved scalar quantizers on the fine grid r·Δ: Q0 reconstructs the even multiples
(r = 2k) and Q1 the odd multiples and zero (r = 2k − sgn k). A 4-state machine,
state' = T[state][k & 1] with T = [[0,2],[2,0],[1,3],[3,1]], selects the quantizer
(Q = state >> 1) of the next weight, so the decoder follows the states from the parities of the
coded indices k alone. The union of both grids has spacing Δ while each quantizer — and the
index the coder pays for — has spacing 2Δ: at equal rate the reconstruction error shrinks,
~1 dB on Gaussian-like weights (the packing gain of a 4-state trellis code).

The encoder picks the index sequence by a Viterbi search minimising
Σ F_i·(x_i − r_i)² + λ·R(k_i | state, previous level) along the trellis (x = w/Δ, F normalised
to mean 1), with the rates R read from the coder's live contexts: the scan is cut into segments
(row pieces of at most ``SEGMENT`` weights), the rate tables (−log2 p per bin) are refreshed
from the adapted contexts before each segment, the trellis is searched, and the chosen indices
are then coded for real. Each survivor path carries its own previous level, so the
previous-level contexts of the binarization are exact along every path.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..coding.cabac import (
    COST0,
    COST1,
    DQ_TRANS,
    N_EG_CTX,
    activity,
    bin_cost,
    ctx_layout,
    enc_finish,
    enc_level,
    gt_ctx,
    hash_step,
    init_contexts,
    recon_int,
    sig_ctx,
    sign_class,
)

SEGMENT = 2048
_INF = 1e300


@njit(cache=True)
def _fill_tables(st, g, n_act, c_sig, c_sign, c_gt, c_eg, sigc, signc, magc, egpre,
                 cost0, cost1):
    """Snapshot the live contexts as bit costs for the trellis."""
    for s in range(4):
        for a in range(n_act):
            for pc in range(3):
                ctx = sig_ctx(c_sig, n_act, s, a, pc)
                sigc[s, a, pc, 0] = bin_cost(st, ctx, 0, cost0, cost1)
                sigc[s, a, pc, 1] = bin_cost(st, ctx, 1, cost0, cost1)
    for pc in range(3):
        signc[pc, 0] = bin_cost(st, c_sign + pc, 0, cost0, cost1)
        signc[pc, 1] = bin_cost(st, c_sign + pc, 1, cost0, cost1)
    for qid in range(2):
        for a in range(n_act):
            for neg in range(2):
                acc = 0.0
                for m in range(1, g + 1):
                    ctx = gt_ctx(c_gt, n_act, g, qid, a, m, neg)
                    magc[qid, a, neg, m] = acc + bin_cost(st, ctx, 0, cost0, cost1)
                    acc += bin_cost(st, ctx, 1, cost0, cost1)
                magc[qid, a, neg, g + 1] = acc
    acc = 0.0
    for j in range(egpre.size):
        ctx = c_eg + min(j, N_EG_CTX - 1)
        egpre[j] = acc + bin_cost(st, ctx, 0, cost0, cost1) + j
        acc += bin_cost(st, ctx, 1, cost0, cost1)


@njit(cache=True, inline="always")
def _rate(k, s, a, pc, g, sigc, signc, magc, egpre):
    if k == 0:
        return sigc[s, a, pc, 0]
    neg = 1 if k < 0 else 0
    m = -k if neg else k
    c = sigc[s, a, pc, 1] + signc[pc, neg]
    if m <= g:
        return c + magc[s >> 1, a, neg, m]
    v = m - g
    nb = 0
    while (v >> (nb + 1)) > 0:
        nb += 1
    return c + magc[s >> 1, a, neg, g + 1] + egpre[nb]


@njit(cache=True, inline="always")
def _k_of_r(r):
    """Index k of an odd reconstruction r on Q1 (r = 2k − sgn k)."""
    if r > 0:
        return (r + 1) >> 1
    return -((-r + 1) >> 1)


@njit(cache=True)
def _trellis(x, fw, use_f, i0, i1, lo, row_len, s0, p0, lam, g, ctx_mode, sigc, signc, magc,
             egpre, levels, bps, bpk):
    """Viterbi over x[i0:i1] from state s0 (previous level p0); writes the indices to
    levels[i0:i1] and returns the final state."""
    J = np.full(4, _INF)
    nJ = np.empty(4)
    pk = np.zeros(4, dtype=np.int64)
    npk = np.zeros(4, dtype=np.int64)
    J[s0] = 0.0
    pk[s0] = p0
    for t in range(i1 - i0):
        i = i0 + t
        xi = float(x[i])
        f = float(fw[i]) if use_f else 1.0
        above_abs = 0
        if ctx_mode == 1 and i - row_len >= lo:
            above_abs = abs(levels[i - row_len])
        # two nearest reconstructions on each quantizer
        ke = int(np.floor(xi * 0.5))
        ro = 2 * int(np.floor((xi - 1.0) * 0.5)) + 1
        # zero cannot win when it costs more distortion than any rate saving could repay
        ax = abs(xi)
        try_zero = ax < 1.0 or f * (2.0 * ax - 1.0) <= lam * 64.0
        for s in range(4):
            nJ[s] = _INF
        for s in range(4):
            js = J[s]
            if js >= _INF:
                continue
            prev = pk[s]
            pc = sign_class(prev)
            a = activity(abs(prev), above_abs) if ctx_mode == 1 else 0
            qid = s >> 1
            for c in range(3):
                if c == 2:
                    if not try_zero:
                        continue
                    k = 0
                    r = 0
                elif qid == 0:
                    k = ke + c
                    r = 2 * k
                    if k == 0:
                        continue
                else:
                    r = ro + 2 * c
                    k = _k_of_r(r)
                d = xi - r
                cost = js + f * d * d + lam * _rate(k, s, a, pc, g, sigc, signc, magc, egpre)
                ns = DQ_TRANS[s, k & 1]
                if cost < nJ[ns]:
                    nJ[ns] = cost
                    bps[t, ns] = s
                    bpk[t, ns] = k
        for s in range(4):
            J[s] = nJ[s]
            if nJ[s] < _INF:
                npk[s] = bpk[t, s]
        for s in range(4):
            pk[s] = npk[s]
    best = 0
    for s in range(1, 4):
        if J[s] < J[best]:
            best = s
    s = best
    for t in range(i1 - i0 - 1, -1, -1):
        levels[i0 + t] = bpk[t, s]
        s = bps[t, s]
    return best


@njit(cache=True)
def dq_chunk(x, fw, use_f, lo, hi, row_len, lam, g, ctx_mode, sf, ss, buf, levels, measure,
             cost0, cost1):
    """Trellis-quantize and code x[lo:hi]. Returns (nbytes, checksum, ideal bits)."""
    n_act, c_sig, c_sign, c_gt, c_eg, n_ctx = ctx_layout(g, ctx_mode)
    st = init_contexts(n_ctx)
    sigc = np.zeros((4, n_act, 3, 2))
    signc = np.zeros((3, 2))
    magc = np.zeros((2, n_act, 2, g + 2))
    egpre = np.zeros(30)
    bps = np.zeros((SEGMENT, 4), dtype=np.int8)
    bpk = np.zeros((SEGMENT, 4), dtype=np.int32)
    low = 0
    rng = 0xFFFFFFFF
    cache = -1
    pend = 0
    pos = 0
    h = 2166136261
    ideal = 0.0
    state = 0
    prev = 0
    col = lo % row_len
    i = lo
    while i < hi:
        if col == 0:
            prev = 0
        seg_end = min(hi, i + (row_len - col), i + SEGMENT)
        _fill_tables(st, g, n_act, c_sig, c_sign, c_gt, c_eg, sigc, signc, magc, egpre,
                     cost0, cost1)
        _trellis(x, fw, use_f, i, seg_end, lo, row_len, state, prev, lam, g, ctx_mode, sigc,
                 signc, magc, egpre, levels, bps, bpk)
        for j in range(i, seg_end):
            a = 0
            if ctx_mode == 1:
                above = levels[j - row_len] if j - row_len >= lo else 0
                a = activity(abs(prev), abs(above))
            k = levels[j]
            low, rng, cache, pend, pos, bits = enc_level(
                k, state, a, sign_class(prev), g, n_act, c_sig, c_sign, c_gt, c_eg, st, sf,
                ss, low, rng, cache, pend, pos, buf, measure)
            ideal += bits
            h = hash_step(h, recon_int(k, state))
            state = DQ_TRANS[state, k & 1]
            prev = k
        col += seg_end - i
        if col == row_len:
            col = 0
        i = seg_end
    pos = enc_finish(low, rng, cache, pend, pos, buf)
    return pos, h, ideal


@njit(cache=True)
def dq_recon(k, chunk):
    """Integer reconstructions r of indices k (value = r·Δ), the state reset at each chunk."""
    out = np.empty(k.size, dtype=np.int32)
    state = 0
    for i in range(k.size):
        if i % chunk == 0:
            state = 0
        out[i] = recon_int(k[i], state)
        state = DQ_TRANS[state, k[i] & 1]
    return out


@njit(cache=True, parallel=True, nogil=True)
def dq_encode_par(x, fw, use_f, row_len, chunk, lam, g, ctx_mode, sf, ss, buf, offs, nbytes,
                  checks, ideal, levels, measure, cost0, cost1):
    nch = offs.size - 1
    n = x.size
    for c in prange(nch):
        lo = c * chunk
        hi = min(n, lo + chunk)
        nb, h, bits = dq_chunk(x, fw, use_f, lo, hi, row_len, lam, g, ctx_mode, sf, ss,
                               buf[offs[c]:offs[c + 1]], levels, measure, cost0, cost1)
        nbytes[c] = nb
        checks[c] = h
        ideal[c] = bits


def dq_encode(x: np.ndarray, fw: np.ndarray | None, row_len: int, chunk: int, lam: float,
              g: int, ctx_mode: int, shifts: tuple[int, int], buf: np.ndarray, offs: np.ndarray,
              measure: bool = False):
    """Dependent quantization + coding of every chunk. Returns (indices k, nbytes, checksums,
    ideal bits)."""
    nch = offs.size - 1
    nbytes = np.zeros(nch, dtype=np.int64)
    checks = np.zeros(nch, dtype=np.int64)
    ideal = np.zeros(nch, dtype=np.float64)
    levels = np.zeros(x.size, dtype=np.int32)
    use_f = fw is not None
    f = fw if use_f else np.ones(1, dtype=np.float32)
    dq_encode_par(x, f, use_f, row_len, chunk, float(lam), g, ctx_mode, shifts[0], shifts[1],
                  buf, offs, nbytes, checks, ideal, levels, measure, COST0, COST1)
    return levels, nbytes, checks, ideal
