"""The common interface of every matrix format, and the lossless intermediate they convert through.

A low-entropy matrix M (m × n) is described by its distinct values Ω sorted by decreasing
frequency (ω0 first, the value left implicit) and the positions of every element that is not
ω0. ``Triplets`` holds exactly that — (row, col, value index ≥ 1), row-major — so every format
is built from it and can give it back: conversions are lossless by construction, and a
quantized tensor (integer indices + codebook) becomes one without ever materialising floats.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numba
import numpy as np

from ..codec import InvalidOption, Quantized
from . import kernels

#: work (stored elements × batch columns) under which the serial kernel is used: a parallel
#: region costs 5-20 µs to start on an idle machine and milliseconds when the other cores are
#: busy (the threads wait for a time slice), so only products of a few hundred µs are split.
#: ``threads=k`` is an upper bound, not an order (measured: benchmarks/formats.py, where two
#: threads lost to one below this work on every layer).
PARALLEL_MIN_WORK = 1 << 20
#: batch products (x n × B) from this work on may be split over threads; whether a split pays
#: is then measured per matrix, not predicted from the work (``MatrixFormat._split_product``)
BATCH_SPLIT_MIN_WORK = 1 << 17
#: ``_split_product`` times each side in this many blocks (alternating sides) of
#: ``SPLIT_TUNE_BLOCK`` runs, the first of each block untimed; the medians are compared
SPLIT_TUNE_ROUNDS = 3
SPLIT_TUNE_BLOCK = 4


def median_times(ways: tuple[Callable[[], Any], Callable[[], Any]], rounds: int, block: int
                 ) -> tuple[tuple[float, float], Any]:
    """(median seconds of each way, the last result): ``rounds`` rounds, each running both
    ways in blocks of ``block`` calls, the order alternating by round and the first call of
    every block untimed (it pays for the switch; timed right after the other way, a serial
    kernel ran 2× slower behind a parallel one)."""
    runs: list[list[float]] = [[], []]
    y = None
    for r in range(rounds):
        for i in (0, 1) if r % 2 == 0 else (1, 0):
            y = ways[i]()
            for _ in range(block - 1):
                t0 = time.perf_counter()
                y = ways[i]()
                runs[i].append(time.perf_counter() - t0)
    return (float(np.median(runs[0])), float(np.median(runs[1]))), y


def faster_way(ways: tuple[Callable[[], Any], Callable[[], Any]], rounds: int, block: int
               ) -> tuple[int, Any]:
    """(index of the way with the lower median time, the last result), timed as
    ``median_times`` times them."""
    (t0, t1), y = median_times(ways, rounds, block)
    return int(t1 < t0), y


def batch_bucket(batch: int) -> int:
    """Batch sizes that share one tuned choice: ⌊log2 B⌋ (2–3, 4–7, 8–15, ...)."""
    return max(int(batch), 1).bit_length() - 1


class ShapeMismatch(InvalidOption):
    """An operand whose shape does not fit the matrix (``M @ x`` with len(x) != n ...)."""


class IndexOverflow(InvalidOption):
    """An index or pointer that does not fit the widest supported width (32 bits)."""


def index_dtype(max_value: int) -> np.dtype:
    """Smallest unsigned dtype (8/16/32 bit) that holds ``max_value`` (SPEC §3 index widths)."""
    if max_value < 0:
        raise IndexOverflow(f"negative index {max_value}")
    for dt in (np.uint8, np.uint16, np.uint32):
        if max_value <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise IndexOverflow(f"index {max_value} does not fit in 32 bits")


def _value_dtype(dtype: np.dtype) -> np.dtype:
    """Codebook dtype: float32/float64 kept; float16 widened to float32 (exact)."""
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise InvalidOption(f"matrix values must be floating point, got dtype {dtype}")
    return np.dtype(np.float64) if dtype.itemsize > 4 else np.dtype(np.float32)


def _check_finite(values: np.ndarray, what: str) -> None:
    if values.size and not np.isfinite(values).all():
        raise InvalidOption(f"{what} contains non-finite values (inf/nan cannot be stored)")


@dataclass(frozen=True)
class Triplets:
    """Lossless sparse description: ``M[rows[k], cols[k]] = omega[vidx[k]]``, all else ω0.

    omega: distinct values by decreasing frequency, ``omega[0]`` = ω0 (at least one value);
    counts: how often each value occurs (sums to m·n);
    rows, cols, vidx: int64, row-major order, vidx ≥ 1.
    """

    shape: tuple[int, int]
    omega: np.ndarray
    counts: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    vidx: np.ndarray

    @property
    def nnz(self) -> int:
        return int(self.rows.shape[0])

    @classmethod
    def from_labels(cls, labels: np.ndarray, values: np.ndarray) -> Triplets:
        """From an m × n integer label array into ``values`` (distinct, finite)."""
        m, n = labels.shape
        counts = np.bincount(labels.ravel(), minlength=values.shape[0]).astype(np.int64)
        if m * n == 0:
            zero = np.zeros(1, values.dtype)
            e = np.zeros(0, np.int64)
            return cls((m, n), zero, np.zeros(1, np.int64), e, e, e)
        # decreasing frequency; on a tie 0.0 first (so CSR and CSER agree), then by value
        order = np.lexsort((values, values != 0, -counts))
        order = order[counts[order] > 0]
        rank = np.zeros(values.shape[0], dtype=index_dtype(max(values.shape[0], 1)))
        rank[order] = np.arange(order.shape[0])
        ranked = rank[labels]
        rows, cols = np.nonzero(ranked)
        vidx = ranked[rows, cols].astype(np.int64)
        return cls((m, n), values[order], counts[order], rows.astype(np.int64),
                   cols.astype(np.int64), vidx)

    @classmethod
    def from_dense(cls, a: Any) -> Triplets:
        a = np.asarray(a)
        if a.ndim != 2:
            raise ShapeMismatch(f"expected a 2-D matrix, got shape {a.shape}")
        dtype = _value_dtype(a.dtype)
        _check_finite(a, "matrix")
        values, labels = np.unique(a.astype(dtype, copy=False), return_inverse=True)
        labels = labels.reshape(a.shape).astype(index_dtype(max(values.shape[0] - 1, 0)))
        return cls.from_labels(labels, values)

    @classmethod
    def from_quantized(cls, q: Quantized | tuple[np.ndarray, np.ndarray]) -> Triplets:
        """From integer indices into a codebook (``dnnzip.codec.Quantized``), no float copy."""
        indices, codebook = (q.indices, q.codebook) if isinstance(q, Quantized) else q
        indices = np.asarray(indices)
        codebook = np.asarray(codebook)
        if indices.ndim != 2:
            raise ShapeMismatch(f"expected 2-D indices, got shape {indices.shape}")
        if indices.dtype.kind not in "ui":
            raise InvalidOption(f"quantized indices must be integers, got dtype {indices.dtype}")
        if codebook.ndim != 1:
            raise ShapeMismatch(f"codebook must be 1-D, got shape {codebook.shape}")
        dtype = _value_dtype(codebook.dtype)
        _check_finite(codebook, "codebook")
        if indices.size:
            lo, hi = int(indices.min()), int(indices.max())
            if lo < 0 or hi >= codebook.shape[0]:
                bad = lo if lo < 0 else hi
                raise InvalidOption(
                    f"quantized index {bad} outside codebook of {codebook.shape[0]} values"
                )
        # equal codebook entries become one value (lossless: same float)
        values, inv = np.unique(codebook.astype(dtype), return_inverse=True)
        labels = inv.astype(index_dtype(max(values.shape[0] - 1, 0)))[indices]
        return cls.from_labels(labels, values)

    def toarray(self) -> np.ndarray:
        out = np.full(self.shape, self.omega[0], dtype=self.omega.dtype)
        out[self.rows, self.cols] = self.omega[self.vidx]
        return out

    def group_keys(self) -> np.ndarray:
        """row·K + value index per stored element (K distinct values): equal keys are one
        CER/CSER group, the elements of a row that share a value."""
        return self.rows * self.omega.shape[0] + self.vidx

    @property
    def num_groups(self) -> int:
        """How many (row, value) groups the stored elements form (CSER's group count)."""
        return int(np.unique(self.group_keys()).size)

    def labels(self) -> np.ndarray:
        """m × n array of value indices (0 = ω0): integers, never floats."""
        lab = np.zeros(self.shape, dtype=index_dtype(max(self.omega.shape[0] - 1, 0)))
        lab[self.rows, self.cols] = self.vidx
        return lab


@dataclass(frozen=True)
class Costs:
    """Work of one product M·X with a batch of ``batch`` columns (SPEC §3 cost model).

    reads/writes count array elements touched; ``width_bits`` is the element width of each
    array and ``size_bytes`` its size, which selects the memory tier of the energy model.
    """

    format: str
    shape: tuple[int, int]
    batch: int
    adds: int
    mults: int
    reads: dict[str, int]
    writes: dict[str, int]
    width_bits: dict[str, int]
    size_bytes: dict[str, int]
    value_bits: int

    @property
    def memory_accesses(self) -> int:
        return sum(self.reads.values()) + sum(self.writes.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": self.format, "shape": list(self.shape), "batch": self.batch,
            "adds": self.adds, "mults": self.mults, "reads": dict(self.reads),
            "writes": dict(self.writes), "memory_accesses": self.memory_accesses,
        }


class MatrixFormat:
    """One interface for all formats, in the spirit of ``scipy.sparse``.

    ``from_dense(a)`` / ``from_quantized(q)`` build, ``toarray()`` restores exactly,
    ``M @ x`` multiplies a vector (n,) or a batch (n, B); ``nnz``, ``nbytes``, ``entropy``,
    ``storage_bits()``, ``costs(batch)``, ``energy(batch, preset)`` account; ``to(name)`` and
    ``tocsr()/tocer()/tocser()/todense()/toeie()`` convert.
    """

    format_name: ClassVar[str] = ""
    #: whether ``_product(x, threads > 1)`` runs a multi-threaded kernel of ours (dense
    #: products thread inside BLAS, whatever the count)
    splits: ClassVar[bool] = True
    #: constructor order of the arrays (``cls(*arrays, shape)``), for ``to_state``/``from_state``
    array_names: ClassVar[tuple[str, ...]] = ()
    shape: tuple[int, int]

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_triplets(cls, t: Triplets) -> MatrixFormat:
        raise NotImplementedError

    def to_triplets(self) -> Triplets:
        raise NotImplementedError

    @classmethod
    def from_dense(cls, a: Any) -> MatrixFormat:
        """Build from a 2-D float array (or tensor); lossless."""
        return cls.from_triplets(Triplets.from_dense(a))

    @classmethod
    def from_quantized(cls, q: Quantized | tuple[np.ndarray, np.ndarray]) -> MatrixFormat:
        """Build from integer indices + codebook (e.g. a decoded ``.dnnz`` tensor)."""
        return cls.from_triplets(Triplets.from_quantized(q))

    @classmethod
    def from_levels(cls, levels: np.ndarray, step: float) -> MatrixFormat:
        """Build from uniform-grid integer levels q (value q·step) without a float matrix."""
        levels = np.asarray(levels)
        if levels.dtype.kind not in "ui":
            raise InvalidOption(f"levels must be integers, got dtype {levels.dtype}")
        if not np.isfinite(step):
            raise InvalidOption(f"step must be finite, got {step}")
        if levels.size == 0:
            return cls.from_triplets(Triplets.from_labels(
                np.zeros(levels.shape, np.uint8), np.zeros(1, np.float32)))
        uniq, inv = np.unique(levels, return_inverse=True)
        codebook = (uniq.astype(np.float64) * float(step)).astype(np.float32)
        return cls.from_quantized((inv.reshape(levels.shape), codebook))

    # ------------------------------------------------------------------ basic properties
    @property
    def dtype(self) -> np.dtype:
        raise NotImplementedError

    @property
    def nnz(self) -> int:
        """Number of explicitly stored elements."""
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays this object holds (the in-memory footprint)."""
        return sum(a.nbytes for a in self.arrays().values())

    def arrays(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def value_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """(distinct values, how often each occurs) over all m·n elements."""
        t = self.to_triplets()
        return t.omega, t.counts

    @property
    def entropy(self) -> float:
        """Order-0 empirical entropy H = −Σ p·log2 p of the element values, bits per element."""
        _, counts = self.value_counts()
        total = counts.sum()
        if total == 0:
            return 0.0
        p = counts[counts > 0] / total
        return float(-(p * np.log2(p)).sum())

    def storage_bits(self) -> dict[str, int]:
        """Exact storage of each array in bits, per the SPEC §3 formulas."""
        raise NotImplementedError

    @property
    def total_bits(self) -> int:
        return int(sum(self.storage_bits().values()))

    def costs(self, batch: int = 1) -> Costs:
        raise NotImplementedError

    def energy(self, batch: int = 1, preset: str = "spec") -> dict[str, float]:
        """Energy in pJ of one product with ``batch`` columns (see ``dnnzip.formats.cost``)."""
        from .cost import energy

        return energy(self.costs(batch), preset)

    def toarray(self) -> np.ndarray:
        return self.to_triplets().toarray()

    def __repr__(self) -> str:
        m, n = self.shape
        return f"<{m}x{n} {self.format_name} matrix, nnz={self.nnz}, {self.nbytes} bytes>"

    # ------------------------------------------------------------------ serialisation
    def to_state(self) -> dict[str, Any]:
        """Plain dict (format name, shape, numpy arrays) for ``torch.save`` / ``np.savez``."""
        arrays = self.arrays()
        return {"format": self.format_name, "shape": list(self.shape),
                **{k: arrays[k] for k in self.array_names}}

    @staticmethod
    def from_state(state: dict[str, Any]) -> MatrixFormat:
        """Rebuild (and validate) a matrix saved by ``to_state``."""
        from . import FORMATS

        try:
            cls = FORMATS[str(state["format"])]
            arrays = [np.asarray(state[k]) for k in cls.array_names]
            shape = tuple(int(v) for v in state["shape"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidOption(f"not a saved matrix: missing or bad {exc}") from None
        return cls.from_arrays(arrays, shape)

    @classmethod
    def from_arrays(cls, arrays: list[np.ndarray], shape: tuple[int, ...]) -> MatrixFormat:
        return cls(*arrays, shape)

    # ------------------------------------------------------------------ conversions
    def to(self, name: str) -> MatrixFormat:
        from . import FORMATS

        key = name.lower()
        if key not in FORMATS:
            raise InvalidOption(f"unknown format {name!r} (known: {', '.join(sorted(FORMATS))})")
        cls = FORMATS[key]
        return self if type(self) is cls else cls.from_triplets(self.to_triplets())

    def todense(self) -> MatrixFormat:
        return self.to("dense")

    def tocsr(self) -> MatrixFormat:
        return self.to("csr")

    def tocer(self) -> MatrixFormat:
        return self.to("cer")

    def tocser(self) -> MatrixFormat:
        return self.to("cser")

    def toeie(self) -> MatrixFormat:
        return self.to("eie")

    # ------------------------------------------------------------------ products
    def __matmul__(self, x: Any) -> np.ndarray:
        return self.dot(x)

    #: lean mat-vec path, set by a format after its first 1-D product:
    #: (compute dtype, n, m, nnz, call(x, y)) — see ``dot``
    _lean: tuple | None = None

    def dot(self, x: Any, threads: int | None = None, out: np.ndarray | None = None
            ) -> np.ndarray:
        """M·x for x of shape (n,) or (n, B).

        threads: upper bound on kernel threads (None: numba's); a product below
        ``PARALLEL_MIN_WORK`` runs on one thread whatever the bound, since starting a parallel
        region costs more than it saves there. out: optional C-contiguous result array of
        the product's shape and dtype (must not overlap x), filled and returned.

        The common case — an exact, C-contiguous 1-D ndarray in the matrix's compute dtype, one
        thread (asked for, or implied by a small product) — skips the general checks and calls
        the cached compiled specialisation directly (about 1 µs less per call, most of a small
        layer's mat-vec).
        """
        lean = self._lean
        if lean is not None and type(x) is np.ndarray and x.dtype is lean[0]:
            ndim = x.ndim
            if (ndim == 1 and x.shape[0] == lean[1] and x.flags.carray
                    and (threads == 1 or ((threads is None or threads > 1)
                                          and lean[3] < PARALLEL_MIN_WORK))):
                if out is None:
                    y = np.empty(lean[2], lean[0])
                else:
                    y = _check_out(out, (lean[2],), lean[0])
                lean[4](x, y)
                return y
            if (ndim == 2 and out is None and x.shape[0] == lean[1] and x.shape[1] > 0
                    and (threads == 1 or ((threads is None or threads > 1)
                                          and lean[3] * x.shape[1] < BATCH_SPLIT_MIN_WORK))):
                return self._product(x, 1)  # batch kernels take any layout
        return self._dot_general(x, threads, out)

    def _dot_general(self, x: Any, threads: int | None, out: np.ndarray | None) -> np.ndarray:
        """``dot`` with every check: any real dtype, layout, batch, thread count."""
        x = np.asarray(x)
        m, n = self.shape
        if x.ndim not in (1, 2):
            raise ShapeMismatch(f"operand must be 1-D or 2-D, got shape {x.shape}")
        if x.shape[0] != n:
            raise ShapeMismatch(
                f"shape mismatch: {m}x{n} {self.format_name} matrix @ operand of shape {x.shape}"
            )
        if x.dtype.kind not in "fiub":
            raise InvalidOption(f"operand dtype {x.dtype} is not a real number type")
        dtype = self.dtype if x.dtype == self.dtype else np.result_type(self.dtype, x.dtype)
        dtype = np.dtype(np.float32) if dtype == np.float32 else np.dtype(np.float64)
        if x.dtype != dtype or (x.ndim == 1 and not x.flags.c_contiguous):
            x = np.ascontiguousarray(x, dtype=dtype)
        shape = (m,) if x.ndim == 1 else (m, x.shape[1])
        if out is not None:
            out = _check_out(out, shape, dtype)
        if threads is not None and threads < 1:
            raise InvalidOption(f"threads must be >= 1, got {threads}")
        if m == 0 or n == 0 or x.size == 0:
            y = np.zeros(shape, dtype)
        else:
            work = self.nnz * (1 if x.ndim == 1 else x.shape[1])
            floor = PARALLEL_MIN_WORK if x.ndim == 1 else BATCH_SPLIT_MIN_WORK
            if threads == 1 or work < floor or not self.splits:
                y = self._product(x, 1)
            elif (nthreads := numba.get_num_threads() if threads is None else threads) == 1:
                y = self._product(x, 1)
            elif x.ndim == 2:
                y = self._split_product(x, nthreads)
            else:
                y = self._threaded_product(x, True, nthreads)
        if out is None:
            return y
        out[...] = y
        return out

    def _threaded_product(self, x: np.ndarray, parallel: bool, nthreads: int) -> np.ndarray:
        """The product on one thread, or on up to ``nthreads`` numba threads. The count is
        handed down to the kernels: numba's get_num_threads costs ~0.7 µs and set_num_threads
        ~1 µs (two locks each), skipped when already right; a B = 8 product on MiniLM's
        output.dense takes 20-25 µs."""
        if not parallel:
            return self._product(x, 1)
        previous = numba.get_num_threads()
        wanted = min(nthreads, numba.config.NUMBA_NUM_THREADS)
        if wanted == previous:
            return self._product(x, wanted)
        numba.set_num_threads(wanted)
        try:
            return self._product(x, wanted)
        finally:
            numba.set_num_threads(previous)

    def _split_product(self, x: np.ndarray, nthreads: int) -> np.ndarray:
        """Y = M·X on ``nthreads`` threads, or on one where that measured faster.

        Work alone does not say when a split pays: on 2 shared vCPUs the parallel batch
        kernels lost to the serial ones on lenet300.fc1 (300×784, B = 64: 75 vs 49 µs) and
        won on MiniLM's intermediate.dense (1536×384, more work: 106 vs 157 µs), while torch's
        CSR gained from a second thread at B = 8 where we never split. So the first product of
        each (batch bucket, threads, dtype) is timed both ways and the way with the lower
        median is kept for the matrix. Medians, not minima: a split's time is the slower of
        its threads', so it is now and then as fast as it could be and often slower, and
        the fastest run of each side would pick it too often. Blocks of runs, alternating
        sides (``SPLIT_TUNE_ROUNDS`` × ``SPLIT_TUNE_BLOCK``), first run of a block untimed:
        alternating run by run measured the serial kernel 2× slower right after a parallel
        one (12 → 24 µs on LeNet-5's conv2 at B = 64) and so picked the split where it lost
        in steady state (lenet300.fc1, B = 64: 79 vs 52 µs)."""
        key = (batch_bucket(x.shape[1]), nthreads, x.dtype)
        split = self.__dict__.setdefault("_split", {})
        if key in split:
            return self._threaded_product(x, split[key], nthreads)
        best, y = faster_way((lambda: self._threaded_product(x, False, nthreads),
                              lambda: self._threaded_product(x, True, nthreads)),
                             SPLIT_TUNE_ROUNDS, SPLIT_TUNE_BLOCK)
        split[key] = bool(best)
        return y

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_lean", None)  # compiled entry points do not pickle; rebuilt on first use
        state.pop("_tuned", None)  # kernel timings belong to this machine
        state.pop("_split", None)
        return state

    def _product(self, x: np.ndarray, threads: int) -> np.ndarray:
        """M·x for x (n,) or (n, B) in the compute dtype: by the serial kernels when
        ``threads`` is 1, else by the parallel ones on ``threads`` numba threads (the count
        numba is set to)."""
        raise NotImplementedError


def _check_out(out: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    if type(out) is not np.ndarray or out.shape != shape or out.dtype != dtype:
        raise ShapeMismatch(
            f"out must be a {dtype} ndarray of shape {shape}, got "
            f"{getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}"
        )
    if not out.flags.carray:
        raise InvalidOption("out must be C-contiguous, aligned and writeable")
    return out


def entry_point(dispatcher: Any, args: tuple) -> Any:
    """The compiled specialisation of a numba ``dispatcher`` for ``args``, to call directly.

    Calling it skips the per-call typing and overload lookup; the caller must then only pass
    arguments of exactly these types. Falls back to the dispatcher if none is compiled yet.
    """
    cres = dispatcher.overloads.get(tuple(numba.typeof(a) for a in args))
    return dispatcher if cres is None else cres.entry_point


def batch_operands(x: np.ndarray, width: int, m: int, zero_out: bool
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(Xe, Y) for an m-row product with x (n × B): Xe an (n + 1) × B' row-major copy, B' the
    multiple of ``width`` at or above B, last row and padded columns zero; Y the m × B'
    output (zeroed when ``zero_out``). Both start on a cache line (``kernels.batch_operands``).

    The zero row is where padded CER/CSER lanes point; the padded columns keep every vector
    load of a kernel full width.
    """
    return kernels.batch_operands(x, padded_width(x.shape[1], width), m, zero_out)


def padded_width(batch: int, width: int) -> int:
    """B', the multiple of the kernel's vector ``width`` at or above the batch B."""
    return -(-batch // width) * width


def has_avx512() -> bool:
    """Whether numba compiles for a CPU with AVX-512 (its target: ``NUMBA_CPU_NAME`` /
    ``NUMBA_CPU_FEATURES`` when set, else this host)."""
    from llvmlite import binding as llvm

    if numba.config.CPU_FEATURES:
        features = str(numba.config.CPU_FEATURES)
    elif numba.config.CPU_NAME and numba.config.CPU_NAME != "host":
        return False  # a named CPU without features: assume the baseline
    else:
        features = llvm.get_host_cpu_features().flatten()
    return "+avx512f" in features.split(",")


def batch_width(dtype: np.dtype, batch: int) -> int:
    """Columns per vector accumulator: 16 float32 (one 512-bit register) unless B ≤ 8."""
    return 16 if (batch > 8 and dtype == np.float32) else 8
