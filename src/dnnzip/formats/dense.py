"""Dense storage: the m × n float array itself, multiplied by BLAS (the baseline)."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ._base import Costs, MatrixFormat, ShapeMismatch, Triplets, _check_finite, _value_dtype


class Dense(MatrixFormat):
    """Plain row-major float matrix; ``@`` is numpy's BLAS (sgemv/sgemm)."""

    format_name = "dense"
    array_names = ("values",)
    splits = False

    def __init__(self, a: Any):
        a = np.asarray(a)
        if a.ndim != 2:
            raise ShapeMismatch(f"expected a 2-D matrix, got shape {a.shape}")
        dtype = _value_dtype(a.dtype)
        _check_finite(a, "matrix")
        self.a = np.ascontiguousarray(a, dtype=dtype)
        self.shape = (int(a.shape[0]), int(a.shape[1]))

    @classmethod
    def from_triplets(cls, t: Triplets) -> Dense:
        return cls(t.toarray())

    @classmethod
    def from_dense(cls, a: Any) -> Dense:
        return cls(a)

    @classmethod
    def from_arrays(cls, arrays: list[np.ndarray], shape: tuple[int, ...]) -> Dense:
        if tuple(arrays[0].shape) != tuple(shape):
            raise ShapeMismatch(f"values of shape {arrays[0].shape} saved as {tuple(shape)}")
        return cls(arrays[0])

    def to_triplets(self) -> Triplets:
        return Triplets.from_dense(self.a)

    def toarray(self) -> np.ndarray:
        return self.a.copy()

    @property
    def dtype(self) -> np.dtype:
        return self.a.dtype

    @property
    def nnz(self) -> int:
        return int(self.a.size)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"values": self.a}

    def value_counts(self) -> tuple[np.ndarray, np.ndarray]:
        values, counts = np.unique(self.a, return_counts=True)
        return values, counts

    def storage_bits(self) -> dict[str, int]:
        return {"values": int(self.a.size) * self.a.itemsize * 8}

    def costs(self, batch: int = 1) -> Costs:
        m, n = self.shape
        nn = m * n
        isz = self.a.itemsize
        return Costs(
            "dense", self.shape, batch, adds=nn * batch, mults=nn * batch,
            reads={"values": nn, "x": nn * batch}, writes={"y": m * batch},
            width_bits={"values": isz * 8, "x": isz * 8, "y": isz * 8},
            size_bytes={"values": nn * isz, "x": n * batch * isz, "y": m * batch * isz},
            value_bits=isz * 8,
        )

    def _product(self, x: np.ndarray, threads: int) -> np.ndarray:
        if x.ndim == 1 and self._lean is None and x.dtype == self.a.dtype:
            m, n = self.shape
            self._lean = (np.dtype(self.a.dtype.name), n, m, m * n,
                          functools.partial(np.matmul, self.a))
        return self.a.astype(x.dtype, copy=False) @ x
