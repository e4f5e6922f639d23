"""Compressed sparse row: the usual sparse baseline, with our own compiled kernels.

Stores every element that is not 0.0: ``data`` (float), ``indices`` (column of each, the
smallest of uint8/16/32 that fits n − 1) and ``indptr`` (row starts, width fitting nnz).
Storage N(1−p0)(b_value + b_index) + (m+1)·b_ptr bits (SPEC §3).
"""

from __future__ import annotations

import functools
from typing import Any

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
    batch_operands,
    batch_width,
    entry_point,
    index_dtype,
    padded_width,
)

ROW_BLOCK = 32


class CSR(MatrixFormat):
    """CSR with narrow index arrays; mat-vec by 16-lane gathers, mat-mat by vector AXPYs."""

    format_name = "csr"
    array_names = ("data", "indices", "indptr")

    def __init__(self, data: Any, indices: Any, indptr: Any, shape: tuple[int, int],
                 check: bool = True):
        m, n = (int(shape[0]), int(shape[1]))
        data = np.asarray(data)
        self.data = np.ascontiguousarray(data, dtype=_value_dtype(data.dtype))
        self.indices = np.ascontiguousarray(indices, dtype=index_dtype(max(n - 1, 0)))
        self.indptr = np.ascontiguousarray(indptr, dtype=index_dtype(self.data.shape[0]))
        self.shape = (m, n)
        if check:
            self._check(np.asarray(indices), np.asarray(indptr))

    def _check(self, indices: np.ndarray, indptr: np.ndarray) -> None:
        m, n = self.shape
        nnz = self.data.shape[0]
        if indptr.shape != (m + 1,) or indices.shape != (nnz,):
            raise ShapeMismatch(
                f"CSR arrays do not fit shape {self.shape}: indptr {indptr.shape}, "
                f"indices {indices.shape}, data ({nnz},)"
            )
        if indptr[0] != 0 or indptr[-1] != nnz or np.any(np.diff(indptr.astype(np.int64)) < 0):
            raise InvalidOption("CSR indptr must rise from 0 to nnz")
        if nnz and (indices.min() < 0 or indices.max() >= n):
            raise InvalidOption(f"CSR column index outside 0..{n - 1}")
        rows = np.repeat(np.arange(m), np.diff(indptr.astype(np.int64)))
        step = np.diff(indices.astype(np.int64))
        if np.any((step <= 0) & (rows[1:] == rows[:-1])):
            raise InvalidOption("CSR column indices must be strictly increasing within a row")
        _check_finite(self.data, "CSR data")

    @classmethod
    def from_triplets(cls, t: Triplets) -> CSR:
        m, n = t.shape
        if t.omega[0] == 0:
            rows, cols, vals = t.rows, t.cols, t.omega[t.vidx]
        else:  # ω0 ≠ 0 is not implicit in CSR: every non-zero element is listed
            lab = t.labels()
            keep = t.omega[lab] != 0
            rows, cols = np.nonzero(keep)
            vals = t.omega[lab[rows, cols]]
        indptr = np.zeros(m + 1, np.int64)
        np.cumsum(np.bincount(rows, minlength=m), out=indptr[1:])
        return cls(vals, cols, indptr, (m, n), check=False)

    @classmethod
    def from_scipy(cls, s: Any) -> CSR:
        s = s.tocsr()
        s.sum_duplicates()
        return cls(s.data, s.indices, s.indptr, s.shape)

    def to_scipy(self):
        import scipy.sparse as sp

        return sp.csr_matrix((self.data, self.indices.astype(np.int32),
                              self.indptr.astype(np.int64)), shape=self.shape)

    def to_triplets(self) -> Triplets:
        m, n = self.shape
        if m * n == 0:
            return Triplets.from_dense(np.zeros(self.shape, self.dtype))
        keep = self.data != 0
        n_zero = m * n - int(keep.sum())
        values, inv, counts = np.unique(self.data[keep], return_inverse=True, return_counts=True)
        if counts.size and counts.max() > n_zero:  # 0 is not ω0: go through the dense labels
            return Triplets.from_dense(self.toarray())
        order = np.lexsort((values, -counts))  # decreasing frequency, then by value
        rank = np.empty(order.shape[0], np.int64)
        rank[order] = np.arange(1, order.shape[0] + 1)
        rows = np.repeat(np.arange(m, dtype=np.int64), np.diff(self.indptr.astype(np.int64)))
        return Triplets(
            self.shape,
            np.concatenate([np.zeros(1, self.dtype), values[order]]),
            np.concatenate([[n_zero], counts[order]]).astype(np.int64),
            rows[keep], self.indices[keep].astype(np.int64), rank[inv.ravel()],
        )

    def toarray(self) -> np.ndarray:
        m, n = self.shape
        out = np.zeros((m, n), self.data.dtype)
        rows = np.repeat(np.arange(m), np.diff(self.indptr.astype(np.int64)))
        out[rows, self.indices] = self.data
        return out

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def nnz(self) -> int:
        return int(self.data.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        return {"data": self.data, "indices": self.indices, "indptr": self.indptr}

    def storage_bits(self) -> dict[str, int]:
        return {k: int(a.size) * a.itemsize * 8 for k, a in self.arrays().items()}

    def costs(self, batch: int = 1) -> Costs:
        m, n = self.shape
        nnz = self.nnz
        isz = self.data.itemsize
        arrays = self.arrays()
        return Costs(
            "csr", self.shape, batch, adds=nnz * batch, mults=nnz * batch,
            reads={"data": nnz, "indices": nnz, "indptr": m + 1, "x": nnz * batch},
            writes={"y": m * batch},
            width_bits={**{k: a.itemsize * 8 for k, a in arrays.items()}, "x": isz * 8,
                        "y": isz * 8},
            size_bytes={**{k: a.nbytes for k, a in arrays.items()}, "x": n * batch * isz,
                        "y": m * batch * isz},
            value_bits=isz * 8,
        )

    def _product(self, x: np.ndarray, threads: int) -> np.ndarray:
        m = self.shape[0]
        if x.ndim == 1:
            y = np.empty(m, x.dtype)
            arrays = (self.data, self.indices, self.indptr)
            if threads > 1:
                kernels.csr_matvec_par(*arrays, x, y, ROW_BLOCK)
            else:
                kernels.csr_matvec(*arrays, x, y)
                if self._lean is None and x.dtype == self.data.dtype:
                    call = entry_point(kernels.csr_matvec, (*arrays, x, y))
                    self._lean = (np.dtype(x.dtype.name), self.shape[1], m, self.nnz,
                                  functools.partial(call, *arrays))
            return y
        b = x.shape[1]
        width = batch_width(x.dtype, b)
        arrays = (self.data, self.indices, self.indptr)
        if threads > 1:
            y = kernels.csr_matmat_par(*arrays, x, padded_width(b, width), width, threads)
        else:
            xe, y = batch_operands(x, width, m, False)
            kernels.csr_matmat(*arrays, xe, y, width)
        return y if y.shape[1] == b else np.ascontiguousarray(y[:, :b])

    def matvec_naive(self, x: np.ndarray) -> np.ndarray:
        """Textbook scalar kernel (for the benchmark's ablation)."""
        y = np.empty(self.shape[0], x.dtype)
        kernels.csr_matvec_naive(self.data, self.indices, self.indptr, x, y)
        return y
