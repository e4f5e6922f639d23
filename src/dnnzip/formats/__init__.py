"""Matrix formats for computing from low-entropy weights: Dense, CSR, CER, CSER, EIE (SPEC §3).

All share one ``scipy.sparse``-like interface (``dnnzip.formats.MatrixFormat``)::

    M = CSER.from_dense(w)              # or .from_quantized(Quantized(indices, codebook))
    y = M @ x                           # x: (n,) or (n, B), compiled numba kernels
    M.toarray(), M.nnz, M.nbytes, M.entropy, M.storage_bits(), M.costs(B), M.energy(B)
    M.tocsr(), M.to("cer"), ...
"""

from . import kernels
from ._base import (
    Costs,
    IndexOverflow,
    MatrixFormat,
    ShapeMismatch,
    Triplets,
    index_dtype,
)
from .cost import PRESETS, energy
from .cser import CER, CSER, SlicedPlan
from .csr import CSR
from .dense import Dense
from .eie import EIE

FORMATS: dict[str, type[MatrixFormat]] = {
    "dense": Dense, "csr": CSR, "cer": CER, "cser": CSER, "eie": EIE,
}


def from_dense(a, format: str = "cser") -> MatrixFormat:
    """Build ``format`` (dense/csr/cer/cser/eie) from a 2-D float array."""
    return _cls(format).from_dense(a)


def from_quantized(q, format: str = "cser") -> MatrixFormat:
    """Build ``format`` from a ``dnnzip.codec.Quantized`` (indices + codebook)."""
    return _cls(format).from_quantized(q)


def _cls(name: str) -> type[MatrixFormat]:
    from ..codec import InvalidOption

    key = str(name).lower()
    if key not in FORMATS:
        raise InvalidOption(f"unknown format {name!r} (known: {', '.join(sorted(FORMATS))})")
    return FORMATS[key]


__all__ = [
    "CER", "CSER", "CSR", "Dense", "EIE", "FORMATS", "PRESETS", "Costs", "IndexOverflow",
    "MatrixFormat", "ShapeMismatch", "SlicedPlan", "Triplets", "energy", "from_dense",
    "from_quantized", "index_dtype", "kernels",
]
