"""CER and CSER: entropy-bounded matrix formats (Wiedemann, Müller, Samek; SPEC §3).

Distinct values Ω sorted by decreasing frequency, ω0 = Ω[0] implicit. Per row, the columns of
the non-ω0 elements are grouped by value:

* CSER — ``Omega`` (K values), ``colI`` (columns, grouped by row then value), ``OmegaI`` (value
  index of each group), ``OmegaPtr`` (group starts in colI + end), ``rowPtr`` (first group of
  each row + end).
* CER — no ``OmegaI``: every row lists its groups in the global order ω1, ω2, … up to the last
  value it holds, with empty groups (repeated pointer) for values it lacks.

y = M·x per row: Σ over groups of ω·(Σ x[colI]) — additions per element, one multiplication per
distinct value — plus ω0·(Σx − Σ listed x) when ω0 ≠ 0. Storage (bits):
CSER N(1−p0)·b_index + G·(b_ptr + ⌈log2 K⌉) + (m+1)·b_ptr + K·b_value; CER drops the ⌈log2 K⌉
term but counts its empty groups in G.

The arrays above are the storage format. Products run from a ``SlicedPlan`` built once from
them (see ``kernels``): the same groups, interleaved 16 at a time for SIMD.
"""

from __future__ import annotations

import functools
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np

from . import kernels
from ._base import (
    Costs,
    InvalidOption,
    MatrixFormat,
    ShapeMismatch,
    Triplets,
    _check_finite,
    _value_dtype,
    batch_bucket,
    batch_operands,
    batch_width,
    entry_point,
    faster_way,
    has_avx512,
    index_dtype,
    padded_width,
)
from ._vec import LANES

#: a CER with more groups than this many times (nnz + rows) is refused: most would be empty
CER_MAX_GROUP_FACTOR = 64
#: batch kernels "auto" chooses among (see ``_Grouped.batch_kernel``), and the timed runs of
#: each it compares (the fastest counts: on a shared machine others only ever add time)
BATCH_KERNELS = ("sliced", "rows", "panel")
TUNE_RUNS = 5
#: the row-wise batch kernel's 64-column passes (``kernels.grouped_matmat``): where the CPU
#: numba compiles for has AVX-512's 32 vector registers
WIDE_PASSES = has_avx512()


#: environment override of ``slice_gathers_win``: "1" vector gathers, "0" scalar loads
SLICE_GATHER_ENV = "DNNZIP_SLICE_GATHER"


@functools.cache
def slice_gathers_win() -> bool:
    """Whether this CPU runs the sliced mat-vec faster with one 16-lane vector gather per
    step than with 16 scalar loads — measured once per process, as the machine property it
    is: on Zen 5 a gather ran at about half the scalar loads' rate, on an AVX-512 Xeon the
    gather form was 13–19% faster on every benchmark matrix (benchmarks/formats.py,
    ablation). Timed on a synthetic 1536×384, 90%-pruned, 15-value matrix by ``faster_way``:
    9 alternating rounds of each form (an untimed call, then a timed one), medians compared.
    ``DNNZIP_SLICE_GATHER=1`` / ``=0`` sets it instead
    (the two forms add in different orders, so fixing it gives run-to-run identical
    rounding across processes)."""
    forced = os.environ.get(SLICE_GATHER_ENV)
    if forced is not None:
        if forced not in ("0", "1"):
            raise InvalidOption(f"{SLICE_GATHER_ENV} must be 0 or 1, got {forced!r}")
        return forced == "1"
    rng = np.random.default_rng(0)
    m, n = 1536, 384
    levels = rng.integers(-7, 8, size=(m, n)) * (rng.random((m, n)) < 0.1)
    plan = CSER.from_dense(levels.astype(np.float32)).plan
    col, meta, lane_wz = plan.packed(np.dtype(np.float32))
    x = rng.standard_normal(n).astype(np.float32)
    y = np.empty(m, np.float32)
    best, _ = faster_way((lambda: kernels.packed_matvec(col, meta, lane_wz, x, y),
                          lambda: kernels.packed_matvec_gather(col, meta, lane_wz, x, y)),
                         rounds=9, block=2)
    return best == 1


def packed_matvec_kernel(parallel: bool):
    """The packed mat-vec in the form this CPU runs faster (``slice_gathers_win``)."""
    if slice_gathers_win():
        return kernels.packed_matvec_gather_par if parallel else kernels.packed_matvec_gather
    return kernels.packed_matvec_par if parallel else kernels.packed_matvec


@dataclass(frozen=True)
class SlicedPlan:
    """Execution layout of CER/CSER groups for the SIMD kernels.

    Rows are cut into blocks (the unit of parallel work). Inside a block, groups are sorted by
    length and dealt 16 to a slice; a slice stores its groups' columns interleaved
    (``col[ptr + 16·l + lane]``), shorter groups padded with column n, which points at a zero
    appended to x. ``lane_row``/``lane_val`` say where each lane's sum goes and with which value.
    """

    shape: tuple[int, int]
    wshift: np.ndarray  # Ω − ω0 in float64; index 0 (ω0 itself) gives 0 for padding lanes
    omega0: float
    col: np.ndarray
    sl_ptr: np.ndarray
    sl_len: np.ndarray
    lane_row: np.ndarray
    lane_val: np.ndarray
    blk_ptr: np.ndarray
    _lane_w: dict = field(default_factory=dict, repr=False, compare=False)
    _scratch: dict = field(default_factory=dict, repr=False, compare=False)

    def lane_weights(self, dtype: np.dtype) -> np.ndarray:
        """(ω − ω0) of every lane in the compute dtype (kept: one vector load per slice)."""
        w = self._lane_w.get(dtype)
        if w is None:
            w = self._lane_w[dtype] = self.wshift.astype(dtype)[self.lane_val]
        return w

    @classmethod
    def build(cls, shape: tuple[int, int], omega: np.ndarray, g_row: np.ndarray,
              g_val: np.ndarray, g_start: np.ndarray, g_len: np.ndarray, colI: np.ndarray,
              blocks: int | None = None) -> SlicedPlan:
        m, n = shape
        if blocks is None:
            # one block per thread: the parallel kernels split the blocks statically, so more
            # would balance no better, and larger blocks sort better (fewer, fuller slices):
            # the 384 × 384 MiniLM mat-vec ran 5.18 µs with 2 blocks, 5.64 with 4 (AMD EPYC)
            blocks = max(1, numba.config.NUMBA_NUM_THREADS)
        keep = g_len > 0
        g_row, g_val = g_row[keep].astype(np.int64), g_val[keep].astype(np.int64)
        g_start, g_len = g_start[keep].astype(np.int64), g_len[keep].astype(np.int64)
        rows_per_block = max(1, -(-m // blocks))
        nblk = max(1, -(-m // rows_per_block))
        blk = g_row // rows_per_block
        order = np.lexsort((-g_len, blk))
        blk_s, len_s = blk[order], g_len[order]
        per_blk = np.bincount(blk, minlength=nblk)
        first = np.concatenate([[0], np.cumsum(per_blk)[:-1]])
        pos = np.arange(order.shape[0]) - first[blk_s]
        blk_ptr = np.zeros(nblk + 1, np.int64)
        np.cumsum(-(-per_blk // LANES), out=blk_ptr[1:])
        nsl = int(blk_ptr[-1])
        sl = blk_ptr[blk_s] + pos // LANES
        lane = pos % LANES
        sl_len = np.zeros(nsl, np.int64)
        lead = lane == 0
        sl_len[sl[lead]] = len_s[lead]  # lane 0 holds the slice's longest group
        sl_ptr = np.zeros(nsl, np.int64)
        if nsl > 1:
            np.cumsum(sl_len[:-1] * LANES, out=sl_ptr[1:])
        slot = sl * LANES + lane
        slice_blk = np.repeat(np.arange(nblk), np.diff(blk_ptr))
        lane_row = np.repeat(slice_blk * rows_per_block, LANES).astype(np.int32)
        lane_row[slot] = g_row[order]
        lane_val = np.zeros(nsl * LANES, np.int32)
        lane_val[slot] = g_val[order]
        col = np.full(int(sl_len.sum()) * LANES, n, dtype=index_dtype(n))
        total = int(len_s.sum())
        grp = np.repeat(np.arange(order.shape[0]), len_s)
        within = np.arange(total) - np.repeat(np.cumsum(len_s) - len_s, len_s)
        src = g_start[order][grp] + within
        col[sl_ptr[sl[grp]] + within * LANES + lane[grp]] = colI[src]
        wshift = omega.astype(np.float64) - float(omega[0])  # rounded once, per compute dtype
        return cls(shape, wshift, float(omega[0]), col, sl_ptr, sl_len.astype(np.int32),
                   lane_row, lane_val, blk_ptr)

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, f).nbytes for f in
                   ("wshift", "col", "sl_ptr", "sl_len", "lane_row", "blk_ptr")) + (
            self.lane_val.shape[0] * self.wshift.itemsize)

    @property
    def padded(self) -> int:
        """Stored column slots including padding (vs. nnz)."""
        return int(self.col.shape[0])

    def packed(self, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(col, meta, lane_wz): the plan in the three arrays of ``kernels.packed_matvec``."""
        key = ("packed", np.dtype(dtype))
        got = self._scratch.get(key)
        if got is None:
            nblk, nsl = self.blk_ptr.shape[0] - 1, self.sl_ptr.shape[0]
            parts = [np.array([nblk, nsl]), self.blk_ptr, self.sl_ptr, self.sl_len, self.lane_row]
            wide = max(int(self.col.shape[0]), self.shape[0]) >= 2**31 - 1
            meta = np.concatenate([p.astype(np.int64) for p in parts]).astype(
                np.int64 if wide else np.int32)
            lane_wz = np.append(self.lane_weights(np.dtype(dtype)), self.omega0).astype(dtype)
            got = self._scratch[key] = (self.col, meta, lane_wz)
        return got

    def matvec_call(self, dtype: np.dtype):
        """call(x, y): y = M·x on one thread through the compiled specialisation for ``dtype``
        (x C-contiguous of length n, y of length m, both ``dtype``), for the lean path."""
        dtype = np.dtype(dtype)
        arrays = self.packed(dtype)
        x, y = np.zeros(self.shape[1], dtype), np.empty(self.shape[0], dtype)
        kernel = packed_matvec_kernel(False)
        kernel(*arrays, x, y)  # compile (or load from the cache) once
        return functools.partial(entry_point(kernel, (*arrays, x, y)), *arrays)

    def product(self, x: np.ndarray, threads: int) -> np.ndarray:
        """M·x for x (n,) or (n, B), already contiguous in the compute dtype, on ``threads``
        numba threads (1: the serial kernels)."""
        m = self.shape[0]
        if x.ndim == 1:
            y = np.empty(m, x.dtype)
            packed_matvec_kernel(threads > 1)(*self.packed(x.dtype), x, y)
            return y
        lane_w = self.lane_weights(x.dtype)
        args = (self.col, self.sl_ptr, self.sl_len, lane_w, self.lane_row, self.blk_ptr)
        b = x.shape[1]
        width = batch_width(x.dtype, b)
        if threads > 1:
            y = kernels.sliced_matmat_par(*args, x, padded_width(b, width), m, width, threads)
        else:
            xe, y = batch_operands(x, width, m, True)
            kernels.sliced_matmat(*args, xe, y, width)
        if b != y.shape[1]:
            y = np.ascontiguousarray(y[:, :b])
        if self.omega0 != 0:
            y += x.dtype.type(self.omega0) * x.sum(axis=0)
        return y


def _bits(k: int) -> int:
    """⌈log2 K⌉ bits to index K values (at least 1)."""
    return max(1, math.ceil(math.log2(k))) if k > 1 else 1


class _Grouped(MatrixFormat):
    """Shared parts of CER and CSER."""

    omega: np.ndarray
    colI: np.ndarray
    OmegaPtr: np.ndarray
    rowPtr: np.ndarray
    _plan: SlicedPlan | None = None
    #: batch products: "sliced" (16 groups per slice on row-major X), "rows" (row-wise groups,
    #: up to 64 output columns in registers), "panel" (sliced groups on 8/16-column panels of X
    #: held contiguously), or "auto": which one is fastest depends on the CPU (on Zen 3 panels
    #: won from 8 columns, on Zen 5 they lose to slices or rows) and on the matrix, so the
    #: first product of each batch-size bucket (``batch_bucket``) and thread count runs every
    #: kernel, timed, and keeps the fastest. Set a kernel by name for run-to-run identical
    #: rounding (the kernels add in different orders).
    batch_kernel: str = "auto"
    _tuned: dict | None = None

    @property
    def dtype(self) -> np.dtype:
        return self.omega.dtype

    @property
    def nnz(self) -> int:
        return int(self.colI.shape[0])

    @property
    def num_groups(self) -> int:
        return int(self.OmegaPtr.shape[0] - 1)

    def _group_values(self) -> np.ndarray:
        raise NotImplementedError

    def _group_rows(self) -> np.ndarray:
        return np.repeat(np.arange(self.shape[0], dtype=np.int64),
                         np.diff(self.rowPtr.astype(np.int64)))

    def value_counts(self) -> tuple[np.ndarray, np.ndarray]:
        m, n = self.shape
        counts = np.bincount(self._group_values(), weights=np.diff(self.OmegaPtr.astype(np.int64)),
                             minlength=self.omega.shape[0]).astype(np.int64)
        counts[0] = m * n - self.nnz
        return self.omega, counts

    def to_triplets(self) -> Triplets:
        omega, counts = self.value_counts()
        glen = np.diff(self.OmegaPtr.astype(np.int64))
        rows = np.repeat(self._group_rows(), glen)
        vidx = np.repeat(self._group_values().astype(np.int64), glen)
        cols = self.colI.astype(np.int64)
        order = np.lexsort((cols, rows))
        t = Triplets(self.shape, omega, counts, rows[order], cols[order], vidx[order])
        if counts.shape[0] > 1 and counts[1:].max() > counts[0]:
            # values were not in frequency order (hand-built arrays): re-rank through labels
            return Triplets.from_labels(t.labels(), omega)
        return t

    @property
    def plan(self) -> SlicedPlan:
        """The SIMD execution layout, built on first use and kept."""
        if self._plan is None:
            glen = np.diff(self.OmegaPtr.astype(np.int64))
            self._plan = SlicedPlan.build(self.shape, self.omega, self._group_rows(),
                                          self._group_values(), self.OmegaPtr[:-1], glen,
                                          self.colI)
        return self._plan

    def group_weights(self, dtype: np.dtype) -> np.ndarray:
        """(ω − ω0) of every group in the compute dtype (kept after the first product)."""
        cache = self.__dict__.setdefault("_gw", {})
        gw = cache.get(dtype)
        if gw is None:
            shift = self.omega.astype(np.float64) - float(self.omega[0])
            gw = cache[dtype] = shift[self._group_values()].astype(dtype)
        return gw

    def _product(self, x: np.ndarray, threads: int) -> np.ndarray:
        mode = self.batch_kernel
        if x.ndim == 1:
            y = self.plan.product(x, threads)
            if self._lean is None and x.dtype == self.dtype:
                self._lean = (np.dtype(self.dtype.name), self.shape[1], self.shape[0], self.nnz,
                              self.plan.matvec_call(self.dtype))
            return y
        if mode != "auto":
            return self._batch_product(mode, x, threads)
        key = (batch_bucket(x.shape[1]), threads, x.dtype)
        tuned = self._tuned
        if tuned is None:
            tuned = self._tuned = {}
        if key in tuned:
            return self._batch_product(tuned[key], x, threads)
        best, y = None, None
        for kernel in BATCH_KERNELS:
            y = self._batch_product(kernel, x, threads)  # untimed: compiled code and plans
            for _ in range(TUNE_RUNS):
                t0 = time.perf_counter()
                y = self._batch_product(kernel, x, threads)
                t = time.perf_counter() - t0
                if best is None or t < best[0]:
                    best = (t, kernel)
        tuned[key] = best[1]
        return y

    def _batch_product(self, mode: str, x: np.ndarray, threads: int) -> np.ndarray:
        """Y = M·X (X n × B, B ≥ 1 columns) by the named batch kernel."""
        if mode == "panel":
            y = np.empty((self.shape[0], x.shape[1]), x.dtype)
            if x.shape[1] <= 8:
                kern = kernels.panel_matmat8_par if threads > 1 else kernels.panel_matmat8
            else:
                kern = kernels.panel_matmat16_par if threads > 1 else kernels.panel_matmat16
            kern(*self.plan.packed(x.dtype), x, y)
            return y
        if mode == "sliced":
            return self.plan.product(x, threads)
        if mode != "rows":
            raise InvalidOption(f"unknown batch kernel {mode!r} (choose from auto, "
                                f"{', '.join(BATCH_KERNELS)})")
        # batch: row by row on the storage arrays, up to 64 output columns in registers
        m = self.shape[0]
        b = x.shape[1]
        width = 8 if b <= 8 else 16
        args = (self.colI, self.OmegaPtr, self.group_weights(x.dtype), self.rowPtr)
        if threads > 1:
            y = kernels.grouped_matmat_par(x, padded_width(b, width), *args, WIDE_PASSES, threads)
        else:
            xe, y = batch_operands(x, width, m, True)
            kernels.grouped_matmat(xe, *args, y, WIDE_PASSES)
        if b != y.shape[1]:
            y = np.ascontiguousarray(y[:, :b])
        if self.omega[0] != 0:
            y += x.dtype.type(self.omega[0]) * x.sum(axis=0)
        return y

    def _costs(self, name: str, extra_reads: dict[str, int], batch: int) -> Costs:
        m, n = self.shape
        nnz = self.nnz
        groups = int(np.count_nonzero(np.diff(self.OmegaPtr.astype(np.int64))))
        isz = self.omega.itemsize
        implicit = self.omega[0] != 0
        adds = (nnz + groups) * batch + ((n + 2 * m) * batch if implicit else 0)
        mults = groups * batch + (m * batch if implicit else 0)
        bits = self.storage_bits()
        arrays = self.arrays()
        reads = {"colI": nnz, "OmegaPtr": self.num_groups + 1, "rowPtr": m + 1,
                 "Omega": groups, **extra_reads, "x": (nnz + (n if implicit else 0)) * batch}
        width = {k: a.itemsize * 8 for k, a in arrays.items()}
        width.update({"x": isz * 8, "y": isz * 8})
        size = {k: -(-v // 8) for k, v in bits.items()}
        size.update({"x": n * batch * isz, "y": m * batch * isz})
        return Costs(name, self.shape, batch, adds=adds, mults=mults, reads=reads,
                     writes={"y": m * batch}, width_bits=width, size_bytes=size, value_bits=isz * 8)

    def matvec_naive(self, x: np.ndarray) -> np.ndarray:
        """Textbook scalar kernel on the storage arrays (the benchmark's ablation baseline)."""
        raise NotImplementedError

    def _validate(self, omega: np.ndarray) -> None:
        m, n = self.shape
        _check_finite(omega, "Omega")
        if omega.shape[0] < 1:
            raise InvalidOption("Omega must hold at least ω0")
        if np.unique(omega).shape[0] != omega.shape[0]:
            raise InvalidOption("Omega values must be distinct")
        if self.rowPtr.shape != (m + 1,):
            raise ShapeMismatch(f"rowPtr has shape {self.rowPtr.shape}, expected ({m + 1},)")
        for name, ptr, end in (("rowPtr", self.rowPtr, self.num_groups),
                               ("OmegaPtr", self.OmegaPtr, self.nnz)):
            p = ptr.astype(np.int64)
            if p[0] != 0 or p[-1] != end or np.any(np.diff(p) < 0):
                raise InvalidOption(f"{name} must rise from 0 to {end}")
        if self.nnz and int(self.colI.max()) >= n:
            raise InvalidOption(f"colI holds a column >= {n}")


def _group_triplets(t: Triplets) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort the non-ω0 elements by (row, value, column); return cols, row·K+value keys, order."""
    key = t.group_keys()  # rows are sorted, columns ascending within a row
    order = np.argsort(key, kind="stable")
    return t.cols[order], key[order], order


class CSER(_Grouped):
    """Compressed Shared Elements Row format (SPEC §3)."""

    format_name = "cser"
    array_names = ("Omega", "colI", "OmegaI", "OmegaPtr", "rowPtr")

    def __init__(self, omega: Any, colI: Any, OmegaI: Any, OmegaPtr: Any, rowPtr: Any,
                 shape: tuple[int, int], check: bool = True):
        m, n = int(shape[0]), int(shape[1])
        omega = np.asarray(omega)
        self.shape = (m, n)
        self.omega = np.ascontiguousarray(omega, dtype=_value_dtype(omega.dtype))
        raw = [np.asarray(a) for a in (colI, OmegaI, OmegaPtr, rowPtr)]
        if check:
            for name, a in zip(("colI", "OmegaI", "OmegaPtr", "rowPtr"), raw, strict=True):
                if a.ndim != 1 or (a.size and (a.dtype.kind not in "ui" or a.min() < 0)):
                    raise InvalidOption(f"CSER {name} must be a 1-D array of non-negative integers")
        self.colI = np.ascontiguousarray(raw[0], dtype=index_dtype(max(n - 1, 0)))
        k = self.omega.shape[0]
        self.OmegaI = np.ascontiguousarray(raw[1], dtype=index_dtype(max(k - 1, 0)))
        self.OmegaPtr = np.ascontiguousarray(raw[2], dtype=index_dtype(raw[0].shape[0]))
        self.rowPtr = np.ascontiguousarray(raw[3], dtype=index_dtype(max(raw[1].shape[0], 0)))
        if check:
            if raw[2].shape[0] != raw[1].shape[0] + 1:
                raise ShapeMismatch("OmegaPtr must have one entry per group plus the end")
            if raw[0].size and int(raw[0].max()) >= n:
                raise InvalidOption(f"colI holds a column >= {n}")
            if raw[1].size and (int(raw[1].max()) >= self.omega.shape[0] or int(raw[1].min()) < 1):
                raise InvalidOption("OmegaI must index Omega[1:] (ω0 is implicit)")
            self._validate(self.omega)

    @classmethod
    def from_triplets(cls, t: Triplets) -> CSER:
        m, n = t.shape
        k = t.omega.shape[0]
        cols, keys, _ = _group_triplets(t)
        if keys.shape[0]:
            starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
        else:
            starts = np.zeros(0, np.int64)
        gkeys = keys[starts]
        omega_i = gkeys % k
        row_ptr = np.searchsorted(gkeys // k, np.arange(m + 1), side="left")
        omega_ptr = np.concatenate([starts, [keys.shape[0]]])
        return cls(t.omega, cols, omega_i, omega_ptr, row_ptr, (m, n), check=False)

    def _group_values(self) -> np.ndarray:
        return self.OmegaI.astype(np.int64)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"Omega": self.omega, "colI": self.colI, "OmegaI": self.OmegaI,
                "OmegaPtr": self.OmegaPtr, "rowPtr": self.rowPtr}

    def storage_bits(self) -> dict[str, int]:
        g = self.num_groups
        return {
            "Omega": self.omega.shape[0] * self.omega.itemsize * 8,
            "colI": self.nnz * self.colI.itemsize * 8,
            "OmegaI": g * _bits(self.omega.shape[0]),
            "OmegaPtr": (g + 1) * self.OmegaPtr.itemsize * 8,
            "rowPtr": (self.shape[0] + 1) * self.rowPtr.itemsize * 8,
        }

    def costs(self, batch: int = 1) -> Costs:
        return self._costs("cser", {"OmegaI": self.num_groups}, batch)

    def matvec_naive(self, x: np.ndarray) -> np.ndarray:
        y = np.empty(self.shape[0], x.dtype)
        kernels.cser_matvec_naive(self.omega - self.omega[0], self.colI, self.OmegaI,
                                  self.OmegaPtr, self.rowPtr, x, y)
        return y + self.omega[0] * x.sum()

    def matvec_grouped(self, x: np.ndarray) -> np.ndarray:
        """Canonical arrays, 16-lane vector gathers per group (second ablation step)."""
        y = np.empty(self.shape[0], x.dtype)
        kernels.cser_matvec_grouped((self.omega - self.omega[0]).astype(x.dtype), self.colI,
                                    self.OmegaI, self.OmegaPtr, self.rowPtr, x, y)
        return y + self.omega[0] * x.sum()


class CER(_Grouped):
    """Compressed Entropy Row format (SPEC §3): CSER without OmegaI, global value order."""

    format_name = "cer"
    array_names = ("Omega", "colI", "OmegaPtr", "rowPtr")

    def __init__(self, omega: Any, colI: Any, OmegaPtr: Any, rowPtr: Any,
                 shape: tuple[int, int], check: bool = True):
        m, n = int(shape[0]), int(shape[1])
        omega = np.asarray(omega)
        self.shape = (m, n)
        self.omega = np.ascontiguousarray(omega, dtype=_value_dtype(omega.dtype))
        raw = [np.asarray(a) for a in (colI, OmegaPtr, rowPtr)]
        if check:
            for name, a in zip(("colI", "OmegaPtr", "rowPtr"), raw, strict=True):
                if a.ndim != 1 or (a.size and (a.dtype.kind not in "ui" or a.min() < 0)):
                    raise InvalidOption(f"CER {name} must be a 1-D array of non-negative integers")
        self.colI = np.ascontiguousarray(raw[0], dtype=index_dtype(max(n - 1, 0)))
        self.OmegaPtr = np.ascontiguousarray(raw[1], dtype=index_dtype(raw[0].shape[0]))
        self.rowPtr = np.ascontiguousarray(raw[2], dtype=index_dtype(max(raw[1].shape[0] - 1, 0)))
        if check:
            if raw[0].size and int(raw[0].max()) >= n:
                raise InvalidOption(f"colI holds a column >= {n}")
            self._validate(self.omega)
            per_row = np.diff(self.rowPtr.astype(np.int64))
            if per_row.size and per_row.max() > self.omega.shape[0] - 1:
                raise InvalidOption("a CER row has more groups than Omega has non-ω0 values")

    @classmethod
    def from_triplets(cls, t: Triplets) -> CER:
        m, n = t.shape
        k = t.omega.shape[0]
        cols, keys, order = _group_triplets(t)
        rows = keys // k
        vals = keys % k
        groups_per_row = np.zeros(m, np.int64)
        np.maximum.at(groups_per_row, rows, vals)
        total = int(groups_per_row.sum())
        if total > CER_MAX_GROUP_FACTOR * (t.nnz + m):
            raise InvalidOption(
                f"CER would need {total} groups for {t.nnz} elements ({k} distinct values); "
                "use CSER for matrices with many distinct values"
            )
        row_ptr = np.zeros(m + 1, np.int64)
        np.cumsum(groups_per_row, out=row_ptr[1:])
        gidx = row_ptr[rows] + vals - 1
        omega_ptr = np.zeros(total + 1, np.int64)
        np.cumsum(np.bincount(gidx, minlength=total), out=omega_ptr[1:])
        return cls(t.omega, cols, omega_ptr, row_ptr, (m, n), check=False)

    def _group_values(self) -> np.ndarray:
        rows = self._group_rows()
        return np.arange(self.num_groups, dtype=np.int64) - self.rowPtr.astype(np.int64)[rows] + 1

    def arrays(self) -> dict[str, np.ndarray]:
        return {"Omega": self.omega, "colI": self.colI, "OmegaPtr": self.OmegaPtr,
                "rowPtr": self.rowPtr}

    def storage_bits(self) -> dict[str, int]:
        g = self.num_groups
        return {
            "Omega": self.omega.shape[0] * self.omega.itemsize * 8,
            "colI": self.nnz * self.colI.itemsize * 8,
            "OmegaPtr": (g + 1) * self.OmegaPtr.itemsize * 8,
            "rowPtr": (self.shape[0] + 1) * self.rowPtr.itemsize * 8,
        }

    def costs(self, batch: int = 1) -> Costs:
        return self._costs("cer", {}, batch)

    def matvec_naive(self, x: np.ndarray) -> np.ndarray:
        y = np.empty(self.shape[0], x.dtype)
        kernels.cer_matvec_naive(self.omega - self.omega[0], self.colI, self.OmegaPtr,
                                 self.rowPtr, x, y)
        return y + self.omega[0] * x.sum()
