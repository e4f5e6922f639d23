"""EIE's relative-indexed CSC (Han et al.), for storage comparison.

Column by column, each stored entry is one byte: a 4-bit index into a 16-value codebook and a
4-bit count of ω0 elements skipped before it. A gap of more than 15 is bridged by padding
entries (value index 0 = ω0, run 15), each covering 16 positions. ``colPtr`` gives each column's
first entry. Storage: 8·entries + (n+1)·b_ptr + 16·b_value bits. ``@`` decodes through CSR: the
format exists to be measured, not to compute on a CPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._base import (
    Costs,
    InvalidOption,
    MatrixFormat,
    ShapeMismatch,
    Triplets,
    _value_dtype,
    index_dtype,
)

RUN_MAX = 15
CODEBOOK = 16


class EIE(MatrixFormat):
    """Relative-indexed CSC with 4-bit value indices and 4-bit zero runs."""

    format_name = "eie"
    array_names = ("codebook", "entries", "colPtr")

    def __init__(self, codebook: Any, entries: Any, colPtr: Any, shape: tuple[int, int],
                 check: bool = True):
        m, n = int(shape[0]), int(shape[1])
        codebook = np.asarray(codebook)
        self.shape = (m, n)
        self.codebook = np.ascontiguousarray(codebook, dtype=_value_dtype(codebook.dtype))
        self.entries = np.ascontiguousarray(entries, dtype=np.uint8)
        self.colPtr = np.ascontiguousarray(colPtr, dtype=index_dtype(self.entries.shape[0]))
        if check:
            if self.codebook.shape[0] > CODEBOOK:
                raise InvalidOption(f"EIE codebook holds at most {CODEBOOK} values")
            if self.colPtr.shape != (n + 1,):
                raise ShapeMismatch(f"colPtr has shape {self.colPtr.shape}, expected ({n + 1},)")
            self._positions()  # raises if a column runs past m rows

    @classmethod
    def from_triplets(cls, t: Triplets) -> EIE:
        m, n = t.shape
        k = t.omega.shape[0]
        if k > CODEBOOK:
            raise InvalidOption(
                f"EIE stores 4-bit value indices: {k} distinct values exceed {CODEBOOK}"
            )
        order = np.lexsort((t.rows, t.cols))  # column-major
        rows, cols, vidx = t.rows[order], t.cols[order], t.vidx[order]
        prev = np.empty_like(rows)
        if rows.shape[0]:
            prev[0] = -1
            prev[1:] = np.where(cols[1:] == cols[:-1], rows[:-1], -1)
        gap = rows - prev - 1
        pads = gap // (RUN_MAX + 1)
        run = gap % (RUN_MAX + 1)
        per_elem = pads + 1
        total = int(per_elem.sum())
        entries = np.full(total, RUN_MAX << 4, np.uint8)  # padding: run 15, value index 0
        last = np.cumsum(per_elem) - 1  # the real entry comes after its paddings
        entries[last] = ((run << 4) | vidx).astype(np.uint8)
        counts = np.bincount(cols, weights=per_elem, minlength=n).astype(np.int64)
        col_ptr = np.zeros(n + 1, np.int64)
        np.cumsum(counts, out=col_ptr[1:])
        return cls(t.omega, entries, col_ptr, (m, n), check=False)

    def _positions(self) -> tuple[np.ndarray, np.ndarray]:
        """Row and column of every entry (padding included): run-length decode, vectorized."""
        m, n = self.shape
        step = (self.entries >> 4).astype(np.int64) + 1
        cols = np.repeat(np.arange(n, dtype=np.int64), np.diff(self.colPtr.astype(np.int64)))
        csum = np.cumsum(step)
        starts = self.colPtr.astype(np.int64)[:-1]
        base = np.where(starts > 0, csum[np.maximum(starts - 1, 0)], 0) if csum.size else starts
        rows = csum - 1 - np.repeat(base, np.diff(self.colPtr.astype(np.int64)))
        if rows.size and rows.max() >= m:
            raise InvalidOption(f"EIE entries run past row {m - 1}")
        return rows, cols

    def to_triplets(self) -> Triplets:
        rows, cols = self._positions()
        vidx = (self.entries & 0x0F).astype(np.int64)
        real = vidx > 0
        if real.any() and int(vidx.max()) >= self.codebook.shape[0]:
            raise InvalidOption("EIE entry indexes past the codebook")
        m, n = self.shape
        lab = np.zeros(self.shape, np.uint8)
        lab[rows[real], cols[real]] = vidx[real]
        counts = np.bincount(lab.ravel(), minlength=self.codebook.shape[0]).astype(np.int64)
        order = np.lexsort((cols[real], rows[real]))
        t = Triplets(self.shape, self.codebook, counts, rows[real][order], cols[real][order],
                     vidx[real][order])
        if counts.shape[0] > 1 and counts[1:].max() > counts[0]:
            return Triplets.from_labels(lab, self.codebook)
        return t

    @property
    def dtype(self) -> np.dtype:
        return self.codebook.dtype

    @property
    def nnz(self) -> int:
        return int(np.count_nonzero(self.entries & 0x0F))

    @property
    def num_entries(self) -> int:
        """Stored one-byte entries, padding included."""
        return int(self.entries.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        return {"codebook": self.codebook, "entries": self.entries, "colPtr": self.colPtr}

    def storage_bits(self) -> dict[str, int]:
        return {
            "codebook": CODEBOOK * self.codebook.itemsize * 8,
            "entries": self.num_entries * 8,
            "colPtr": (self.shape[1] + 1) * self.colPtr.itemsize * 8,
        }

    def costs(self, batch: int = 1) -> Costs:
        m, n = self.shape
        e = self.num_entries
        isz = self.codebook.itemsize
        bits = self.storage_bits()
        return Costs(
            "eie", self.shape, batch, adds=e * batch, mults=e * batch,
            reads={"entries": e, "colPtr": n + 1, "codebook": e, "x": n * batch},
            writes={"y": e * batch},
            width_bits={"entries": 8, "colPtr": self.colPtr.itemsize * 8, "codebook": isz * 8,
                        "x": isz * 8, "y": isz * 8},
            size_bytes={**{k: -(-v // 8) for k, v in bits.items()}, "x": n * batch * isz,
                        "y": m * batch * isz},
            value_bits=isz * 8,
        )

    def _product(self, x: np.ndarray, threads: int) -> np.ndarray:
        from .csr import CSR

        return CSR.from_triplets(self.to_triplets())._product(x, threads)
