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
from numba.cpython.unsafe.numbers import leading_zeros

from ..coding.cabac import (
    COST0,
    COST1,
    N_EG_CTX,
    activity,
    bin_cost,
    chunk_by_chunk,
    ctx_layout,
    dq_next,
    enc_finish,
    enc_level,
    gt_ctx,
    hash_step,
    init_contexts,
    recon_int,
    sig_ctx,
    sign_class,
    warm_table,
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
def _k_of_r(r):
    """Index k of an odd reconstruction r on Q1 (r = 2k − sgn k): (r + 1)/2 for r > 0,
    (r − 1)/2 for r < 0, as one shift — the sign of r is random, a branch on it mispredicts."""
    return (r + 1 - 2 * (r < 0)) >> 1


@njit(cache=True, inline="always")
def _mag_bits(k, qid, a, n_act, g, magf, egpre):
    """Bits of the magnitude of a non-zero index k (|k| > j flags, then the exp-Golomb
    prefix of v = |k| − g when |k| > g, nb = ⌊log2 v⌋ from a leading-zero count) in
    quantizer ``qid``'s contexts: the part of the rate that does not depend on the state's
    previous level, so the two states of one quantizer share it. Branch-free: |k| > g is
    data, not a pattern."""
    neg = 1 if k < 0 else 0
    m = -k if neg else k
    row = ((qid * n_act + a) * 2 + neg) * (g + 2)
    t = magf[np.uint64(row + min(m, g + 1))]
    nb = 63 - leading_zeros(np.uint64(max(m - g, 1)))
    e = egpre[np.uint64(nb)]
    return t + (e if m > g else 0.0)


@njit(cache=True, inline="always")
def _state_step(js, s, prev, above_abs, ctx_mode, n_act, g, kA, kB, mA, mB, dA, dB, dZ,
                zero_ok, lam, sigf, signf, magf, egpre):
    """Costs of the three candidates of one trellis state (A, B: the two nearest non-zero
    indices of its quantizer; Z: zero), sorted into the two successor states by index parity
    in the scan order of the exhaustive search (A, B, Z; strict <, so ties keep the first).
    Rate of a non-zero k: (sig + sign) + magnitude bits; ``mA``/``mB`` are the magnitude
    bits when the caller shares them between the states of a quantizer (ctx_mode 0), else
    they are computed here with this path's activity class.
    Returns (even cost, even k, odd cost, odd k), the k's as float64 (see ``_trellis_body``);
    branch-free selects, no stores."""
    pc = sign_class(prev)
    a = 0
    qid = s >> 1
    if ctx_mode == 1:
        a = activity(abs(prev), above_abs)
        mA = _mag_bits(kA, qid, a, n_act, g, magf, egpre)
        mB = _mag_bits(kB, qid, a, n_act, g, magf, egpre)
    sb = ((s * n_act + a) * 3 + pc) * 2
    s0 = sigf[np.uint64(sb)]
    s1 = sigf[np.uint64(sb + 1)]
    sA = s1 + signf[np.uint64(pc * 2 + (1 if kA < 0 else 0))]
    sB = s1 + signf[np.uint64(pc * 2 + (1 if kB < 0 else 0))]
    cA = js + dA + lam * (sA + mA)
    cB = js + dB + lam * (sB + mB)
    cZ = js + dZ + lam * s0
    # Q0's nearest pair may contain 0 itself: that one is only a candidate as Z. At most one
    # of A, B is even (neighbours on Q0; on Q1 neighbours, or −1 and 1). Each candidate's
    # cost in the even / odd slot is its cost plus 0 or _INF by parity: numba lowers
    # `a if c else b` to blocks, and with computed costs as arms LLVM merged the blocks that
    # test one parity into a branch, which the random parities mispredicted; selects
    # between constants, and on float compares, stay branch-free
    cA += 0.0 if kA != 0 else _INF
    cB += 0.0 if kB != 0 else _INF
    cZ += 0.0 if zero_ok else _INF
    pA = 0.0 if (kA & 1) == 0 else _INF
    pB = 0.0 if (kB & 1) == 0 else _INF
    fA = float(kA)
    fB = float(kB)
    eA = cA + pA
    eB = cB + pB
    oA = cA + (_INF - pA)
    oB = cB + (_INF - pB)
    tb = eB < eA  # strict: ties keep the first in scan order (A, B, Z)
    eC = eB if tb else eA
    eK = fB if tb else fA
    tz = cZ < eC
    eC = cZ if tz else eC
    eK = 0.0 if tz else eK
    to = oB < oA
    oC = oB if to else oA
    oK = fB if to else fA
    return eC, eK, oC, oK


@njit(cache=True, _nrt=False)
def _trellis(w, sc, fw, use_f, i0, i1, lo, row_len, s0, p0, lam, g, ctx_mode, sigc, signc, magc,
             egpre, levels, bps, bpk):
    """``_trellis_body`` inlined twice, the context mode a constant in each copy (as the
    decoder's chunk loop): with it a run-time value, the per-weight branches around the
    shared magnitude bits ran the whole search about 3× slower. Compiled without reference
    counting, as the coder's kernels (``coding.cabac``, speed notes)."""
    if ctx_mode == 0:
        return _trellis_body(w, sc, fw, use_f, i0, i1, lo, row_len, s0, p0, lam, g, 0, sigc,
                             signc, magc, egpre, levels, bps, bpk)
    return _trellis_body(w, sc, fw, use_f, i0, i1, lo, row_len, s0, p0, lam, g, 1, sigc,
                         signc, magc, egpre, levels, bps, bpk)


@njit(cache=True, inline="always")
def _trellis_body(w, sc, fw, use_f, i0, i1, lo, row_len, s0, p0, lam, g, ctx_mode, sigc, signc,
                  magc, egpre, levels, bps, bpk):
    """Viterbi over x[i0:i1] (x = w/Δ, ``sc`` = Δ in float32) from state s0 (previous level
    p0); writes the indices to levels[i0:i1] and returns the final state.

    Per weight: the two nearest indices of each quantizer plus zero, for each of the 4 states
    (each survivor path carries its previous level for the contexts). Successors: T maps
    Q0 states {0, 1} to {0, 2} and Q1 states {2, 3} to {1, 3}, each successor having one
    even-index and one odd-index predecessor — so the add–compare–select is written out on
    scalars, without stores or data-dependent branches."""
    n_act = sigc.shape[1]
    sigf = sigc.reshape(-1)
    signf = signc.reshape(-1)
    magf = magc.reshape(-1)
    J0 = _INF
    J1 = _INF
    J2 = _INF
    J3 = _INF
    if s0 == 0:
        J0 = 0.0
    elif s0 == 1:
        J1 = 0.0
    elif s0 == 2:
        J2 = 0.0
    else:
        J3 = 0.0
    # each path's previous level rides as a float64 (exact: |k| < 2^29): its selects are then
    # float masked moves, while integer cmovs were turned back into branches by LLVM's x86
    # cmov conversion (the per-weight choices are data, a branch on them mispredicts)
    P0 = float(p0)
    P1 = P0
    P2 = P0
    P3 = P0
    for t in range(i1 - i0):
        i = i0 + t
        xi = float(w[i] / sc)
        f = float(fw[i]) if use_f else 1.0
        above_abs = 0
        if ctx_mode == 1 and i - row_len >= lo:
            above_abs = abs(levels[i - row_len])
        # two nearest reconstructions on each quantizer: Q0 r = 2k, Q1 r odd (k = (r ± 1)/2)
        ke = int(np.floor(xi * 0.5))
        ro = 2 * int(np.floor((xi - 1.0) * 0.5)) + 1
        ax = abs(xi)
        # zero cannot win when it costs more distortion than any rate saving could repay
        zero_ok = (ax < 1.0) | (f * (2.0 * ax - 1.0) <= lam * 64.0)
        d = xi - 2 * ke
        dA0 = f * d * d
        d = xi - 2 * (ke + 1)
        dB0 = f * d * d
        d = xi - ro
        dA1 = f * d * d
        d = xi - (ro + 2)
        dB1 = f * d * d
        dZ = f * xi * xi
        kA1 = _k_of_r(ro)
        kB1 = _k_of_r(ro + 2)
        mA0 = mB0 = mA1 = mB1 = 0.0
        if ctx_mode == 0:  # one activity class: both states of a quantizer share these
            mA0 = _mag_bits(ke, 0, 0, n_act, g, magf, egpre)
            mB0 = _mag_bits(ke + 1, 0, 0, n_act, g, magf, egpre)
            mA1 = _mag_bits(kA1, 1, 0, n_act, g, magf, egpre)
            mB1 = _mag_bits(kB1, 1, 0, n_act, g, magf, egpre)
        e0, ek0, o0, ok0 = _state_step(J0, 0, P0, above_abs, ctx_mode, n_act, g, ke, ke + 1,
                                       mA0, mB0, dA0, dB0, dZ, zero_ok, lam, sigf, signf,
                                       magf, egpre)
        e1, ek1, o1, ok1 = _state_step(J1, 1, P1, above_abs, ctx_mode, n_act, g, ke, ke + 1,
                                       mA0, mB0, dA0, dB0, dZ, zero_ok, lam, sigf, signf,
                                       magf, egpre)
        e2, ek2, o2, ok2 = _state_step(J2, 2, P2, above_abs, ctx_mode, n_act, g, kA1, kB1,
                                       mA1, mB1, dA1, dB1, dZ, zero_ok, lam, sigf, signf,
                                       magf, egpre)
        e3, ek3, o3, ok3 = _state_step(J3, 3, P3, above_abs, ctx_mode, n_act, g, kA1, kB1,
                                       mA1, mB1, dA1, dB1, dZ, zero_ok, lam, sigf, signf,
                                       magf, egpre)
        # state 0 <- (0, even) | (1, odd); 2 <- (0, odd) | (1, even);
        # state 1 <- (2, even) | (3, odd); 3 <- (2, odd) | (3, even)
        tk = o1 < e0
        J0 = o1 if tk else e0
        P0 = ok1 if tk else ek0
        b0 = 1 if tk else 0
        tk = e1 < o0
        J2 = e1 if tk else o0
        P2 = ek1 if tk else ok0
        b2 = 1 if tk else 0
        tk = o3 < e2
        J1 = o3 if tk else e2
        P1 = ok3 if tk else ek2
        b1 = 3 if tk else 2
        tk = e3 < o2
        J3 = e3 if tk else o2
        P3 = ek3 if tk else ok2
        b3 = 3 if tk else 2
        bps[t, 0] = b0
        bps[t, 1] = b1
        bps[t, 2] = b2
        bps[t, 3] = b3
        bpk[t, 0] = int(P0)
        bpk[t, 1] = int(P1)
        bpk[t, 2] = int(P2)
        bpk[t, 3] = int(P3)
    best = 0
    bj = J0
    if J1 < bj:
        best = 1
        bj = J1
    if J2 < bj:
        best = 2
        bj = J2
    if J3 < bj:
        best = 3
    s = best
    for t in range(i1 - i0 - 1, -1, -1):
        levels[i0 + t] = bpk[t, s]
        s = bps[t, s]
    return best


@njit(cache=True)
def dq_chunk(w, sc, fw, use_f, lo, hi, row_len, lam, g, ctx_mode, wt, buf, levels, measure,
             cost0, cost1):
    """Trellis-quantize and code x[lo:hi] (x = w/sc). Returns (nbytes, checksum, ideal bits)."""
    n_act, c_sig, c_sign, c_gt, c_eg, n_ctx = ctx_layout(g, ctx_mode)
    st = init_contexts(n_ctx)
    sigc = np.zeros((4, n_act, 3, 2))
    signc = np.zeros((3, 2))
    magc = np.zeros((2, n_act, 2, g + 2))
    egpre = np.zeros(30)
    bps = np.zeros((SEGMENT, 4), dtype=np.int8)
    bpk = np.zeros((SEGMENT, 4), dtype=np.int32)
    return _dq_chunk_kernel(w, sc, fw, use_f, lo, hi, row_len, lam, g, ctx_mode, wt, buf, levels,
                            measure, cost0, cost1, st, sigc, signc, magc, egpre, bps, bpk)


@njit(cache=True, _nrt=False)
def _dq_chunk_kernel(w, sc, fw, use_f, lo, hi, row_len, lam, g, ctx_mode, wt, buf, levels,
                     measure, cost0, cost1, st, sigc, signc, magc, egpre, bps, bpk):
    """``dq_chunk`` on the state ``dq_chunk`` allocated, compiled without reference counting (as the
    coder's kernels, ``coding.cabac`` speed notes); the loop inlined twice, the context
    mode a constant in each copy."""
    if ctx_mode == 0:
        return _dq_chunk_body(w, sc, fw, use_f, lo, hi, row_len, lam, g, 0, wt, buf, levels,
                              measure, cost0, cost1, st, sigc, signc, magc, egpre, bps, bpk)
    return _dq_chunk_body(w, sc, fw, use_f, lo, hi, row_len, lam, g, 1, wt, buf, levels,
                          measure, cost0, cost1, st, sigc, signc, magc, egpre, bps, bpk)


@njit(cache=True, inline="always")
def _dq_chunk_body(w, sc, fw, use_f, lo, hi, row_len, lam, g, ctx_mode, wt, buf, levels,
                   measure, cost0, cost1, st, sigc, signc, magc, egpre, bps, bpk):
    n_act, c_sig, c_sign, c_gt, c_eg, n_ctx = ctx_layout(g, ctx_mode)
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
        _trellis(w, sc, fw, use_f, i, seg_end, lo, row_len, state, prev, lam, g, ctx_mode, sigc,
                 signc, magc, egpre, levels, bps, bpk)
        for j in range(i, seg_end):
            a = 0
            if ctx_mode == 1:
                above = levels[j - row_len] if j - row_len >= lo else 0
                a = activity(abs(prev), abs(above))
            k = levels[j]
            low, rng, cache, pend, pos, bits = enc_level(
                k, state, a, sign_class(prev), g, n_act, c_sig, c_sign, c_gt, c_eg, st, wt,
                low, rng, cache, pend, pos, buf, measure)
            ideal += bits
            h = hash_step(h, recon_int(k, state))
            state = dq_next(state, k)
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
        state = dq_next(state, k[i])
    return out


@njit(cache=True, parallel=True, nogil=True)
def dq_encode_par(w, sc, fw, use_f, row_len, chunk, lam, g, ctx_mode, sf, ss, buf, offs, nbytes,
                  checks, ideal, levels, measure, cost0, cost1):
    nch = offs.size - 1
    n = w.size
    wt = warm_table(sf, ss)
    for c in prange(nch):
        lo = c * chunk
        hi = min(n, lo + chunk)
        nb, h, bits = dq_chunk(w, sc, fw, use_f, lo, hi, row_len, lam, g, ctx_mode, wt,
                               buf[offs[c]:offs[c + 1]], levels, measure, cost0, cost1)
        nbytes[c] = nb
        checks[c] = h
        ideal[c] = bits


def dq_encode(w: np.ndarray, sc: float, fw: np.ndarray | None, row_len: int, chunk: int,
              lam: float, g: int, ctx_mode: int, shifts: tuple[int, int], buf: np.ndarray,
              offs: np.ndarray, measure: bool = False):
    """Dependent quantization + coding of every chunk of x = w / sc. Returns (indices k,
    nbytes, checksums, ideal bits)."""
    nch = offs.size - 1
    nbytes = np.zeros(nch, dtype=np.int64)
    checks = np.zeros(nch, dtype=np.int64)
    ideal = np.zeros(nch, dtype=np.float64)
    levels = np.zeros(w.size, dtype=np.int32)
    use_f = fw is not None
    f = fw if use_f else np.ones(1, dtype=np.float32)
    with chunk_by_chunk():
        dq_encode_par(w, np.float32(sc), f, use_f, row_len, chunk, float(lam), g, ctx_mode,
                      shifts[0], shifts[1], buf, offs, nbytes, checks, ideal, levels, measure,
                      COST0, COST1)
    return levels, nbytes, checks, ideal
