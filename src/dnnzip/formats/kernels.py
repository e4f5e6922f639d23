"""Compiled mat-vec and mat-mat kernels for CSR, CER and CSER.

Three generations of the CER/CSER dot product are kept, because the benchmark shows what each
design step buys (SPEC §3, y = M·x, per row: for each value group s = Σ x[colI], acc += ω·s):

1. ``cser_matvec_naive`` / ``cer_matvec_naive`` — the textbook loop on the canonical arrays: one
   scalar accumulator per group, so every add waits for the previous one, and a short inner loop
   whose exit the branch predictor misses once per group.
2. ``cser_matvec_grouped`` — same canonical arrays, each group summed with 16-lane vector gathers
   (``_vec.group_sum``): several independent accumulators, index streams read 16 at a time.
3. ``sliced_matvec`` / ``sliced_matmat`` — the execution layout built by ``SlicedPlan``: the groups
   of a block of rows are sorted by length and interleaved 16 at a time (lane = group), so one
   step adds one element to 16 groups (16 scalar loads into 16 sums, or one vector gather in
   ``sliced_matvec_gather``: slower on Zen 5, 13–19% faster on an AVX-512 Xeon, so the
   packed mat-vec comes in both forms and ``cser`` measures which one this CPU runs faster
   once per process), loops have no per-group exits, and the
   batch form adds whole contiguous rows of X (n × B, row-major) into 16 vector accumulators.

All kernels take ``wshift = Ω − ω0``: with it the implicit value needs no special case,
y = Σ_groups (ω − ω0)·s + ω0·Σx, and the caller adds the last term (zero when ω0 = 0).
Kernels ending in ``_par`` split row blocks over numba threads (``prange``); blocks own
disjoint rows, so no two threads write the same output. The batch ones take ``threads``, the
caller's ``numba.get_num_threads()``: called inside, it keeps numba from caching the kernel.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._vec import (
    LANES,
    group_rows_matmat8,
    group_rows_matmat16,
    group_rows_matmat32,
    group_rows_matmat48,
    group_rows_matmat64,
    group_sum,
    row_axpy8,
    row_axpy16,
    row_axpy32,
    row_axpy64,
    row_dot,
    slice_matmat8,
    slice_matmat16,
    slice_matvec,
    slice_matvec_gather,
    slice_panel8,
    slice_panel16,
)

# ----------------------------------------------------------------------------- naive references


@njit(cache=True)
def cser_matvec_naive(omega, colI, OmegaI, OmegaPtr, rowPtr, x, y):
    """Textbook CSER mat-vec (one accumulator, scalar): the ablation baseline."""
    for i in range(rowPtr.shape[0] - 1):
        acc = 0.0
        for g in range(rowPtr[i], rowPtr[i + 1]):
            s = 0.0
            for k in range(OmegaPtr[g], OmegaPtr[g + 1]):
                s += x[colI[k]]
            acc += omega[OmegaI[g]] * s
        y[i] = acc


@njit(cache=True)
def cer_matvec_naive(omega, colI, OmegaPtr, rowPtr, x, y):
    """Textbook CER mat-vec: the g-th group of a row holds value Ω[1 + g − rowPtr[i]]."""
    for i in range(rowPtr.shape[0] - 1):
        acc = 0.0
        g0 = rowPtr[i]
        for g in range(g0, rowPtr[i + 1]):
            s = 0.0
            for k in range(OmegaPtr[g], OmegaPtr[g + 1]):
                s += x[colI[k]]
            acc += omega[1 + g - g0] * s
        y[i] = acc


@njit(cache=True, fastmath=True)
def cser_matvec_grouped(omega, colI, OmegaI, OmegaPtr, rowPtr, x, y):
    """Canonical CSER arrays, each group summed by 16-lane vector gathers."""
    for i in range(rowPtr.shape[0] - 1):
        acc = 0.0
        for g in range(rowPtr[i], rowPtr[i + 1]):
            s = group_sum(x, colI, np.int64(OmegaPtr[g]), np.int64(OmegaPtr[g + 1]))
            acc += omega[OmegaI[g]] * s
        y[i] = acc


# ----------------------------------------------------------------------------- sliced CER/CSER


@njit(inline="always", fastmath=True)
def _sliced_block_vec(b, col, sl_ptr, sl_len, lane_w, lane_row, blk_ptr, xe, y):
    for sl in range(blk_ptr[b], blk_ptr[b + 1]):
        slice_matvec(xe, col, np.int64(sl_ptr[sl]), np.int64(sl_len[sl]), lane_w, lane_row,
                     np.int64(sl * LANES), y)


@njit(inline="always", fastmath=True)
def _sliced_block_vec_gather(b, col, sl_ptr, sl_len, lane_w, lane_row, blk_ptr, xe, y):
    for sl in range(blk_ptr[b], blk_ptr[b + 1]):
        slice_matvec_gather(xe, col, np.int64(sl_ptr[sl]), np.int64(sl_len[sl]), lane_w,
                            lane_row, np.int64(sl * LANES), y)


@njit(inline="always")
def _prepare_vec(x, xe, y, omega0):
    """xe = [x, 0] (padded lanes read the 0); y = ω0·Σx (0 when ω0 = 0)."""
    total = 0.0
    for j in range(x.shape[0]):
        xe[j] = x[j]
        total += x[j]
    xe[x.shape[0]] = 0
    start = omega0 * total
    for i in range(y.shape[0]):
        y[i] = start


@njit(cache=True, fastmath=True)
def sliced_matvec(col, sl_ptr, sl_len, lane_w, lane_row, blk_ptr, x, xe, y, omega0):
    """y = Σ_groups (ω − ω0)·Σ x[cols] + ω0·Σx; xe is scratch of n + 1 (x and the padding 0)."""
    _prepare_vec(x, xe, y, omega0)
    for b in range(blk_ptr.shape[0] - 1):
        _sliced_block_vec(b, col, sl_ptr, sl_len, lane_w, lane_row, blk_ptr, xe, y)


@njit(cache=True, fastmath=True)
def sliced_matvec_gather(col, sl_ptr, sl_len, lane_w, lane_row, blk_ptr, x, xe, y, omega0):
    """``sliced_matvec`` with one 16-lane vector gather per step instead of 16 scalar loads
    (the slower of the two on Zen 5, the faster on an AVX-512 Xeon: the benchmark's
    ablation shows both)."""
    _prepare_vec(x, xe, y, omega0)
    for b in range(blk_ptr.shape[0] - 1):
        _sliced_block_vec_gather(b, col, sl_ptr, sl_len, lane_w, lane_row, blk_ptr, xe, y)


@njit(cache=True, fastmath=True, parallel=True)
def sliced_matvec_par(col, sl_ptr, sl_len, lane_w, lane_row, blk_ptr, x, xe, y, omega0):
    """Parallel ``sliced_matvec``: one row block per task."""
    _prepare_vec(x, xe, y, omega0)
    for b in prange(blk_ptr.shape[0] - 1):
        _sliced_block_vec(b, col, sl_ptr, sl_len, lane_w, lane_row, blk_ptr, xe, y)


# ----------------------------------------------------------------------------- packed plan
#
# The same sliced kernels on a plan packed into three arrays, so a call passes five arguments
# instead of ten: numba's dispatcher spends ~70 ns typing and unboxing each argument, which is
# a third of a 100×300 mat-vec. ``meta`` (int32, or int64 past 2³¹ slots) holds
# [nblk, nsl, blk_ptr (nblk+1), sl_ptr (nsl), sl_len (nsl), lane_row (16·nsl)]; ``lane_wz`` is
# lane_w with ω0 appended. The x + padding-zero scratch is allocated inside the kernel.


@njit(inline="always")
def _unpack(meta):
    nblk = np.int64(meta[0])
    nsl = np.int64(meta[1])
    o = 2
    blk_ptr = meta[o:o + nblk + 1]
    o += nblk + 1
    sl_ptr = meta[o:o + nsl]
    o += nsl
    sl_len = meta[o:o + nsl]
    o += nsl
    lane_row = meta[o:o + nsl * LANES]
    return blk_ptr, sl_ptr, sl_len, lane_row


@njit(inline="always")
def _packed_start(meta, lane_wz, x, y):
    """The plan's arrays from ``meta``, and xe = [x, 0] with y = ω0·Σx (``_prepare_vec``)."""
    blk_ptr, sl_ptr, sl_len, lane_row = _unpack(meta)
    xe = np.empty(x.shape[0] + 1, x.dtype)
    _prepare_vec(x, xe, y, lane_wz[lane_wz.shape[0] - 1])
    return blk_ptr, sl_ptr, sl_len, lane_row, xe


@njit(cache=True, fastmath=True)
def packed_matvec(col, meta, lane_wz, x, y):
    """``sliced_matvec`` on a packed plan: y = Σ_groups (ω − ω0)·Σ x[cols] + ω0·Σx."""
    blk_ptr, sl_ptr, sl_len, lane_row, xe = _packed_start(meta, lane_wz, x, y)
    for b in range(blk_ptr.shape[0] - 1):
        _sliced_block_vec(b, col, sl_ptr, sl_len, lane_wz, lane_row, blk_ptr, xe, y)


@njit(cache=True, fastmath=True, parallel=True)
def packed_matvec_par(col, meta, lane_wz, x, y):
    """Parallel ``packed_matvec``: one row block per task."""
    blk_ptr, sl_ptr, sl_len, lane_row, xe = _packed_start(meta, lane_wz, x, y)
    for b in prange(blk_ptr.shape[0] - 1):
        _sliced_block_vec(b, col, sl_ptr, sl_len, lane_wz, lane_row, blk_ptr, xe, y)


@njit(cache=True, fastmath=True)
def packed_matvec_gather(col, meta, lane_wz, x, y):
    """``packed_matvec`` with one 16-lane vector gather per slice step (``slice_matvec_gather``)
    instead of 16 scalar loads: the faster form on some CPUs (``cser.slice_gathers_win``)."""
    blk_ptr, sl_ptr, sl_len, lane_row, xe = _packed_start(meta, lane_wz, x, y)
    for b in range(blk_ptr.shape[0] - 1):
        _sliced_block_vec_gather(b, col, sl_ptr, sl_len, lane_wz, lane_row, blk_ptr, xe, y)


@njit(cache=True, fastmath=True, parallel=True)
def packed_matvec_gather_par(col, meta, lane_wz, x, y):
    """Parallel ``packed_matvec_gather``: one row block per task."""
    blk_ptr, sl_ptr, sl_len, lane_row, xe = _packed_start(meta, lane_wz, x, y)
    for b in prange(blk_ptr.shape[0] - 1):
        _sliced_block_vec_gather(b, col, sl_ptr, sl_len, lane_wz, lane_row, blk_ptr, xe, y)


@njit(inline="always")
def _empty_aligned(size, like):
    """np.empty(size, like.dtype) starting on a 64-byte (cache-line) boundary: numba aligns
    to 32 and numpy to 16, and a 16-float row load that straddles two lines ran the batch
    kernels 2-2.3× slower (Xeon, the benchmark's shapes)."""
    buf = np.empty(size + 64 // like.itemsize, like.dtype)
    skip = ((64 - buf.ctypes.data % 64) % 64) // like.itemsize
    return buf[skip:skip + size]


@njit(inline="always")
def _zeros3_aligned(d0, d1, d2, like):
    out = _empty_aligned(d0 * d1 * d2, like)
    out[:] = 0
    return out.reshape((d0, d1, d2))


@njit(inline="always")
def _padded_copy(x, bp):
    """Xe: the (n + 1) × bp row-major, cache-line aligned copy of x (n × B) with the last row
    and the columns past B zero (where padded lanes point; full-width vector loads)."""
    n, b = x.shape
    xe = _empty_aligned((n + 1) * bp, x).reshape((n + 1, bp))
    for j in range(n):
        for c in range(b):
            xe[j, c] = x[j, c]
        for c in range(b, bp):
            xe[j, c] = 0
    xe[n, :] = 0
    return xe


@njit(cache=True)
def batch_operands(x, bp, m, zero_out):
    """(Xe, Y) for a batch product: Xe the ``_padded_copy`` of x, Y the m × bp output, also
    cache-line aligned, zeroed when ``zero_out``. One compiled call: the same from numpy cost
    ~3× the dispatch on small layers."""
    xe = _padded_copy(x, bp)
    y = _empty_aligned(m * bp, x).reshape((m, bp))
    if zero_out:
        y[:, :] = 0
    return xe, y


#: largest Xe (bytes) of which each thread of a parallel batch kernel makes its own copy
#: (``_copy_per_task``); above it the threads share one, which bounds the memory on
#: many-core machines with large im2col batches.
PRIVATE_COPY_BYTES = 1 << 20


@njit(inline="always")
def _copy_per_task(x, bp, tasks):
    """Whether each task of a parallel batch kernel makes its own Xe, on its own thread.

    Why: a copy made by the calling thread sits in that core's cache, and every random row
    gather of the other threads then pulls a line across cores. On MiniLM's output.dense
    (384 × 1536, 90% pruned, B = 8, 2 threads, Intel Xeon) a prototype of the sliced kernel
    ran 29.6 µs with one shared copy and 23.5-24 µs with one copy per thread (both including
    the copies); the whole product went from 0.89× to 1.29-1.40× torch's sparse CSR (the
    latter on an AMD EPYC)."""
    return tasks > 1 and (x.shape[0] + 1) * bp * x.itemsize <= PRIVATE_COPY_BYTES


@njit(inline="always")
def _par_start(x, bp, m, tasks, zero_out):
    """The start of a parallel batch kernel: Y (m × bp, aligned, zeroed when ``zero_out``),
    whether each task copies X itself (``_copy_per_task``), and the Xe all tasks read — a
    one-row placeholder when each makes its own."""
    y = _empty_aligned(m * bp, x).reshape((m, bp))
    if zero_out:
        y[:, :] = 0
    private = _copy_per_task(x, bp, tasks)
    if private:
        return y, private, _empty_aligned(bp, x).reshape((1, bp))
    return y, private, _padded_copy(x, bp)


@njit(inline="always")
def _task_operand(x, bp, private, shared):
    return _padded_copy(x, bp) if private else shared


@njit(inline="always")
def _task_bounds(prefix, tasks, t):
    """[i0, i1): task t's share of the items whose cumulative work is ``prefix`` (length
    items + 1, non-decreasing), split so each task gets about the same work."""
    items = prefix.shape[0] - 1
    total = np.int64(prefix[items]) - np.int64(prefix[0])
    i0 = 0 if t == 0 else np.searchsorted(prefix, prefix[0] + total * t // tasks)
    i1 = items if t == tasks - 1 else np.searchsorted(prefix, prefix[0] + total * (t + 1) // tasks)
    return min(i0, items), min(i1, items)


@njit(inline="always")
def _pack_panels(x, width):
    """x (n × B, any layout) → Xp (P, n + 1, width): column panels stored contiguously, the
    last row and the columns past B zero (padded lanes and columns read zeros)."""
    n, b = x.shape
    npanel = (b + width - 1) // width
    xp = _zeros3_aligned(npanel, n + 1, width, x)
    for p in range(npanel):
        c0 = p * width
        c1 = min(b, c0 + width)
        for j in range(n):
            for c in range(c0, c1):
                xp[p, j, c - c0] = x[j, c]
    return xp


@njit(inline="always")
def _unpack_panels(yp, x, omega0, y):
    """y = Yp back in (m × B) + ω0·Σ_j x[j, :] (the implicit value, skipped when ω0 = 0)."""
    m, b = y.shape
    width = yp.shape[2]
    for p in range(yp.shape[0]):
        c0 = p * width
        c1 = min(b, c0 + width)
        for i in range(m):
            for c in range(c0, c1):
                y[i, c] = yp[p, i, c - c0]
    if omega0 != 0:
        colsum = np.zeros(b, np.float64)
        for j in range(x.shape[0]):
            for c in range(b):
                colsum[c] += x[j, c]
        for i in range(m):
            for c in range(b):
                y[i, c] += omega0 * colsum[c]


@njit(inline="always", fastmath=True)
def _panel_block8(b, col, sl_ptr, sl_len, lane_wz, lane_row, blk_ptr, xp, yp):
    for p in range(xp.shape[0]):
        xq = xp[p]
        yq = yp[p]
        for sl in range(blk_ptr[b], blk_ptr[b + 1]):
            base, length, o = np.int64(sl_ptr[sl]), np.int64(sl_len[sl]), np.int64(sl * LANES)
            for g0 in range(0, LANES, 8):
                slice_panel8(xq, col, base, length, np.int64(g0), lane_wz, lane_row, o, yq)


@njit(inline="always", fastmath=True)
def _panel_block16(b, col, sl_ptr, sl_len, lane_wz, lane_row, blk_ptr, xp, yp):
    for p in range(xp.shape[0]):
        xq = xp[p]
        yq = yp[p]
        for sl in range(blk_ptr[b], blk_ptr[b + 1]):
            base, length, o = np.int64(sl_ptr[sl]), np.int64(sl_len[sl]), np.int64(sl * LANES)
            for g0 in range(0, LANES, 4):
                slice_panel16(xq, col, base, length, np.int64(g0), lane_wz, lane_row, o, yq)


# One kernel per panel width: a run-time choice between the two inside one loop nest cost
# 30-90 % (measured), so the width is fixed at compile time.


@njit(cache=True, fastmath=True)
def panel_matmat8(col, meta, lane_wz, x, y):
    """Y = M·X on a packed plan, X (n × B) cut into 8-column panels stored contiguously.

    Per panel, a slice's 16 groups are done in two passes of 8 lanes: 8 accumulators of one
    AVX2 register each (no spills), and the (n + 1) × 8 panel of X and the m × 8 panel of Y
    stay in L1/L2 while all slices stream by. y = Σ_groups (ω − ω0)·ΣX + ω0·ΣX.
    """
    blk_ptr, sl_ptr, sl_len, lane_row = _unpack(meta)
    xp = _pack_panels(x, 8)
    yp = _zeros3_aligned(xp.shape[0], y.shape[0], 8, x)
    for blk in range(blk_ptr.shape[0] - 1):
        _panel_block8(blk, col, sl_ptr, sl_len, lane_wz, lane_row, blk_ptr, xp, yp)
    _unpack_panels(yp, x, lane_wz[lane_wz.shape[0] - 1], y)


@njit(cache=True, fastmath=True, parallel=True)
def panel_matmat8_par(col, meta, lane_wz, x, y):
    """Parallel ``panel_matmat8``: one row block per task (blocks own disjoint rows)."""
    blk_ptr, sl_ptr, sl_len, lane_row = _unpack(meta)
    xp = _pack_panels(x, 8)
    yp = _zeros3_aligned(xp.shape[0], y.shape[0], 8, x)
    for blk in prange(blk_ptr.shape[0] - 1):
        _panel_block8(blk, col, sl_ptr, sl_len, lane_wz, lane_row, blk_ptr, xp, yp)
    _unpack_panels(yp, x, lane_wz[lane_wz.shape[0] - 1], y)


@njit(cache=True, fastmath=True)
def panel_matmat16(col, meta, lane_wz, x, y):
    """``panel_matmat8`` on 16-column panels, 4 lanes per pass (two registers per group):
    half the index loads per float, for batches above 8."""
    blk_ptr, sl_ptr, sl_len, lane_row = _unpack(meta)
    xp = _pack_panels(x, 16)
    yp = _zeros3_aligned(xp.shape[0], y.shape[0], 16, x)
    for blk in range(blk_ptr.shape[0] - 1):
        _panel_block16(blk, col, sl_ptr, sl_len, lane_wz, lane_row, blk_ptr, xp, yp)
    _unpack_panels(yp, x, lane_wz[lane_wz.shape[0] - 1], y)


@njit(cache=True, fastmath=True, parallel=True)
def panel_matmat16_par(col, meta, lane_wz, x, y):
    """Parallel ``panel_matmat16``: one row block per task (blocks own disjoint rows)."""
    blk_ptr, sl_ptr, sl_len, lane_row = _unpack(meta)
    xp = _pack_panels(x, 16)
    yp = _zeros3_aligned(xp.shape[0], y.shape[0], 16, x)
    for blk in prange(blk_ptr.shape[0] - 1):
        _panel_block16(blk, col, sl_ptr, sl_len, lane_wz, lane_row, blk_ptr, xp, yp)
    _unpack_panels(yp, x, lane_wz[lane_wz.shape[0] - 1], y)


@njit(inline="always", fastmath=True)
def _sliced_block_mat(b, col, sl_ptr, sl_len, lane_w, lane_row, blk_ptr, Xe, Y, width):
    for sl in range(blk_ptr[b], blk_ptr[b + 1]):
        base = np.int64(sl_ptr[sl])
        length = np.int64(sl_len[sl])
        o = np.int64(sl * LANES)
        for j0 in range(0, Xe.shape[1], width):
            if width == 16:
                slice_matmat16(Xe, col, base, length, np.int64(j0), lane_w, lane_row, o, Y)
            else:
                slice_matmat8(Xe, col, base, length, np.int64(j0), lane_w, lane_row, o, Y)


@njit(cache=True, fastmath=True)
def sliced_matmat(col, sl_ptr, sl_len, lane_w, lane_row, blk_ptr, Xe, Y, width):
    """Y += Σ_groups (ω − ω0)·Σ Xe[cols, :]; Xe is (n+1) × B' row-major, B' a multiple of width."""
    for b in range(blk_ptr.shape[0] - 1):
        _sliced_block_mat(b, col, sl_ptr, sl_len, lane_w, lane_row, blk_ptr, Xe, Y, width)


@njit(cache=True, fastmath=True, parallel=True)
def sliced_matmat_par(col, sl_ptr, sl_len, lane_w, lane_row, blk_ptr, x, bp, m, width, threads):
    """Parallel ``sliced_matmat`` on x (n × B): returns Y (m × bp, aligned, bp the padded B).
    One task per thread, each a contiguous run of row blocks and its own copy of Xe
    (``_copy_per_task``)."""
    nblk = blk_ptr.shape[0] - 1
    tasks = max(1, min(threads, nblk))
    y, private, shared = _par_start(x, bp, m, tasks, True)
    for t in prange(tasks):
        xe = _task_operand(x, bp, private, shared)
        for b in range(nblk * t // tasks, nblk * (t + 1) // tasks):
            _sliced_block_mat(b, col, sl_ptr, sl_len, lane_w, lane_row, blk_ptr, xe, y, width)
    return y


# ----------------------------------------------------------------------------- CSR


@njit(cache=True)
def csr_matvec_naive(data, indices, indptr, x, y):
    """Textbook CSR mat-vec (one accumulator, scalar)."""
    for i in range(indptr.shape[0] - 1):
        acc = 0.0
        for k in range(indptr[i], indptr[i + 1]):
            acc += data[k] * x[indices[k]]
        y[i] = acc


@njit(inline="always", fastmath=True)
def _csr_rows_vec(r0, r1, data, indices, indptr, x, y):
    for i in range(r0, r1):
        y[i] = row_dot(data, indices, x, np.int64(indptr[i]), np.int64(indptr[i + 1]))


@njit(cache=True, fastmath=True)
def csr_matvec(data, indices, indptr, x, y):
    """CSR mat-vec with 16-lane masked gathers and vector FMAs per row."""
    _csr_rows_vec(0, indptr.shape[0] - 1, data, indices, indptr, x, y)


@njit(cache=True, fastmath=True, parallel=True)
def csr_matvec_par(data, indices, indptr, x, y, block):
    """Parallel CSR mat-vec over blocks of ``block`` rows."""
    m = indptr.shape[0] - 1
    for b in prange((m + block - 1) // block):
        _csr_rows_vec(b * block, min(m, (b + 1) * block), data, indices, indptr, x, y)


@njit(inline="always", fastmath=True)
def _csr_rows_mat(r0, r1, data, indices, indptr, Xe, Y, width):
    bp = Xe.shape[1]
    for i in range(r0, r1):
        a = np.int64(indptr[i])
        e = np.int64(indptr[i + 1])
        ii = np.int64(i)
        if width == 8:
            for j0 in range(0, bp, 8):
                row_axpy8(data, indices, Xe, a, e, np.int64(j0), Y, ii)
            continue
        j0 = 0
        while j0 < bp:  # the widest pass that fits: each pass streams the row's nnz once
            left = bp - j0
            if left >= 64:
                row_axpy64(data, indices, Xe, a, e, np.int64(j0), Y, ii)
                j0 += 64
            elif left >= 32:
                row_axpy32(data, indices, Xe, a, e, np.int64(j0), Y, ii)
                j0 += 32
            else:
                row_axpy16(data, indices, Xe, a, e, np.int64(j0), Y, ii)
                j0 += 16


@njit(cache=True, fastmath=True)
def csr_matmat(data, indices, indptr, Xe, Y, width):
    """CSR times a row-major batch Xe (n × B', B' a multiple of width): vector AXPYs per row,
    in passes of 64, 32 or 16 columns (``width`` 16) or 8 (``width`` 8). Fewer, wider passes
    read the row's indices and values fewer times: 64-column passes ran 1.4-1.6× faster
    than 16-column ones at B = 64 (Xeon, 1 thread, the benchmark's matrix shapes)."""
    _csr_rows_mat(0, indptr.shape[0] - 1, data, indices, indptr, Xe, Y, width)


@njit(cache=True, fastmath=True, parallel=True)
def csr_matmat_par(data, indices, indptr, x, bp, width, threads):
    """Parallel ``csr_matmat`` on x (n × B): returns Y (m × bp). One task per thread, each a
    run of rows with about the same nnz and its own copy of Xe (``_copy_per_task``)."""
    m = indptr.shape[0] - 1
    tasks = max(1, min(threads, m))
    y, private, shared = _par_start(x, bp, m, tasks, False)
    for t in prange(tasks):
        xe = _task_operand(x, bp, private, shared)
        r0, r1 = _task_bounds(indptr, tasks, t)
        _csr_rows_mat(r0, r1, data, indices, indptr, xe, y, width)
    return y


# ----------------------------------------------------------------------------- row-wise batch


@njit(inline="always", fastmath=True)
def _group_rows_block(r0, r1, Xe, colI, OmegaPtr, gw, rowPtr, Y, wide):
    bp = Xe.shape[1]
    for i in range(r0, r1):
        g0 = np.int64(rowPtr[i])
        g1 = np.int64(rowPtr[i + 1])
        ii = np.int64(i)
        if bp == 8:
            group_rows_matmat8(Xe, colI, OmegaPtr, gw, g0, g1, np.int64(0), Y, ii)
            continue
        j0 = 0
        while j0 < bp:
            left = bp - j0
            if left >= 64 and wide:
                group_rows_matmat64(Xe, colI, OmegaPtr, gw, g0, g1, np.int64(j0), Y, ii)
                j0 += 64
            elif left >= 64:
                group_rows_matmat32(Xe, colI, OmegaPtr, gw, g0, g1, np.int64(j0), Y, ii)
                group_rows_matmat32(Xe, colI, OmegaPtr, gw, g0, g1, np.int64(j0 + 32), Y, ii)
                j0 += 64
            elif left == 48:
                group_rows_matmat48(Xe, colI, OmegaPtr, gw, g0, g1, np.int64(j0), Y, ii)
                j0 += 48
            elif left == 32:
                group_rows_matmat32(Xe, colI, OmegaPtr, gw, g0, g1, np.int64(j0), Y, ii)
                j0 += 32
            else:
                group_rows_matmat16(Xe, colI, OmegaPtr, gw, g0, g1, np.int64(j0), Y, ii)
                j0 += 16


@njit(cache=True, fastmath=True)
def grouped_matmat(Xe, colI, OmegaPtr, gw, rowPtr, Y, wide):
    """Y += Σ_groups gw[g]·Σ Xe[colI[group], :] row by row; Xe row-major, width 8 or 16·k.

    gw[g] is the group's (ω − ω0). Each row keeps its output columns in registers while its
    groups stream by, 64 per pass when ``wide`` (``WIDE_PASSES``: three sets of 4 × 512-bit
    accumulators fit AVX-512's 32 registers; the index stream is read once instead of twice,
    1.2-1.9× faster at B = 64 on the benchmark's shapes), else as 32-column passes (64 would
    spill AVX2's 16).
    """
    _group_rows_block(0, rowPtr.shape[0] - 1, Xe, colI, OmegaPtr, gw, rowPtr, Y, wide)


@njit(cache=True, fastmath=True, parallel=True)
def grouped_matmat_par(x, bp, colI, OmegaPtr, gw, rowPtr, wide, threads):
    """Parallel ``grouped_matmat`` on x (n × B): returns Y (m × bp). One task per thread,
    each a run of rows with about the same nnz (a row's elements start at
    OmegaPtr[rowPtr[i]]) and its own copy of Xe (``_copy_per_task``)."""
    m = rowPtr.shape[0] - 1
    tasks = max(1, min(threads, m))
    y, private, shared = _par_start(x, bp, m, tasks, True)
    starts = OmegaPtr[rowPtr]
    for t in prange(tasks):
        xe = _task_operand(x, bp, private, shared)
        r0, r1 = _task_bounds(starts, tasks, t)
        _group_rows_block(r0, r1, xe, colI, OmegaPtr, gw, rowPtr, y, wide)
    return y
