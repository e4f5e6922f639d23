"""Energy model of SPEC §3: pJ per arithmetic operation and per memory access.

``spec`` preset — by operand width 8/16/32 bit: add 0.2/0.4/0.9, multiply 0.6/1.1/3.7; an access
costs by the size of the array it touches: ≤ 8 KB 1.25/2.5/5, ≤ 32 KB 2.5/5/10, ≤ 1 MB
12.5/25/50, larger (DRAM) 250/500/1000. 64-bit operands cost twice the 32-bit figure.

``45nm`` preset — the table of Deep Compression / EIE (Horowitz, 45 nm): 32-bit float add 0.9,
multiply 3.7, 32 KB SRAM read 5, DRAM 640 per 32-bit word; narrower or wider accesses are
scaled by width/32 (energy per bit), arrays above 32 KB live in DRAM.

E = Σ_ops count·e_op(value width) + Σ_arrays accesses·e_mem(array size, element width).
"""

from __future__ import annotations

from typing import Any

from ..codec import InvalidOption
from ._base import Costs, index_dtype

_WIDTHS = (8, 16, 32)
_SPEC_ADD = (0.2, 0.4, 0.9)
_SPEC_MULT = (0.6, 1.1, 3.7)
_SPEC_MEM = ((8 * 1024, (1.25, 2.5, 5.0)), (32 * 1024, (2.5, 5.0, 10.0)),
             (1024 * 1024, (12.5, 25.0, 50.0)), (None, (250.0, 500.0, 1000.0)))

PRESETS = ("spec", "45nm")


def _by_width(table: tuple[float, ...], bits: int) -> float:
    if bits > 32:
        return table[-1] * bits / 32
    for w, e in zip(_WIDTHS, table, strict=True):
        if bits <= w:
            return e
    return table[-1]


def op_energy(kind: str, bits: int, preset: str = "spec") -> float:
    """pJ of one add or mult on ``bits``-wide operands."""
    if preset == "45nm":
        base = 0.9 if kind == "add" else 3.7
        return base * bits / 32
    return _by_width(_SPEC_ADD if kind == "add" else _SPEC_MULT, bits)


def mem_energy(size_bytes: int, bits: int, preset: str = "spec") -> float:
    """pJ of one read or write of a ``bits``-wide element of an array of ``size_bytes``."""
    if preset == "45nm":
        return (5.0 if size_bytes <= 32 * 1024 else 640.0) * bits / 32
    for limit, table in _SPEC_MEM:
        if limit is None or size_bytes <= limit:
            return _by_width(table, bits)
    raise AssertionError("unreachable")


def energy(c: Costs, preset: str = "spec") -> dict[str, float]:
    """Energy (pJ) of the product described by ``c``: arithmetic, memory and total."""
    if preset not in PRESETS:
        raise InvalidOption(f"unknown energy preset {preset!r} (known: {', '.join(PRESETS)})")
    ops = c.adds * op_energy("add", c.value_bits, preset) + c.mults * op_energy(
        "mult", c.value_bits, preset)
    mem = 0.0
    for table in (c.reads, c.writes):
        for name, count in table.items():
            mem += count * mem_energy(c.size_bytes[name], c.width_bits[name], preset)
    return {"ops_pJ": ops, "memory_pJ": mem, "total_pJ": ops + mem,
            "per_output_pJ": (ops + mem) / max(1, c.shape[0] * c.batch)}


# ----------------------------------------------------------------------------- time model

#: batch sizes at which throughputs are measured; other batches interpolate in log-space
TIME_MODEL_BATCHES = (1, 8, 64)
#: calibration matrices: one that stays in L2 (128 KB as float32), one that streams from L3
TIME_MODEL_SHAPES = ((128, 256), (768, 768))

Rates = dict[int, tuple[float, ...]]


class TimeModel:
    """Predicted time of a product from its work and this machine's measured throughputs.

    t(format, B) = t0(format, B) + work(format, B) / rate(format, B, m·n), with work the
    multiply-adds a kernel performs: dense m·n·B, CSR nnz·B, CER/CSER nnz·B (each stored
    element added once per column), and t0 the fixed cost of one call (checks, allocation,
    dispatch) — measured on a 1 × 2 matrix, it decides small layers (a 100 × 300 mat-vec is
    ~1 µs of work). Rates (work units per second) are measured by ``calibrate`` on synthetic
    90%-pruned 4-bit Gaussian matrices of two sizes, because they depend on the CPU and its
    caches: a dense BLAS product gains a lot from batching and from a matrix that fits in L2,
    a gather-bound sparse one little; between and beyond the two sizes the rate is
    interpolated (clamped) in log(m·n). "dense" is timed as PyTorch's matmul: what a layer that
    ``convert_model`` keeps runs; "cser" with its batch kernel left on "auto", so the rate is
    that of the kernel the calibration matrix tuned itself to (each matrix tunes its own).

    A matrix whose arrays (``nbytes``, ``stream_bytes``) exceed the per-core L2 cache C
    streams what L2 cannot hold on every call: t(format, B) ≥ t0 + (nbytes − C) / bandwidth,
    the rate ``calibrate`` measures for one thread reading beyond its caches (charging the
    whole of nbytes would make a 2.4 MB dense layer, most of which stays in a 2 MB L2, four
    times too slow). The sparse calibration matrices fit in L2; without this floor the model
    carried their rates over to the 30 522 × 384 embedding and predicted CSR 5% faster than
    CSER at batch 1, where three benchmark runs measured CSR 15–71% slower: CSER's arrays
    are less than half of CSR's bytes.
    """

    def __init__(self, rates: dict[str, tuple[float, ...] | Rates],
                 batches: tuple[int, ...] = TIME_MODEL_BATCHES,
                 overhead: dict[str, tuple[float, ...]] | None = None,
                 bandwidth: float | None = None, cache_bytes: int | None = None):
        # a plain tuple is a rate that does not depend on the matrix size
        self.rates: dict[str, Rates] = {
            k: {int(s): tuple(float(r) for r in t) for s, t in
                (v.items() if isinstance(v, dict) else ((1, v),))}
            for k, v in rates.items()}
        self.batches = tuple(batches)
        self.overhead = {k: tuple(float(t) for t in v) for k, v in (overhead or {}).items()}
        #: bytes per second streamed from beyond L2 (None: no bandwidth floor)
        self.bandwidth = None if bandwidth is None else float(bandwidth)
        self.cache_bytes = l2_cache_bytes() if cache_bytes is None else int(cache_bytes)

    def _interp(self, table: tuple[float, ...], batch: int) -> float:
        import numpy as np

        return float(np.exp(np.interp(np.log(max(batch, 1)), np.log(self.batches),
                                      np.log(table))))

    def rate(self, fmt: str, batch: int, size: int | None = None) -> float:
        """Work units per second at ``batch`` for a matrix of ``size`` = m·n elements."""
        import numpy as np

        by_size = self.rates["cser" if fmt == "cer" else fmt]
        sizes = sorted(by_size)
        at = [np.log(self._interp(by_size[s], batch)) for s in sizes]
        if size is None or len(sizes) == 1:
            return float(np.exp(at[-1]))
        return float(np.exp(np.interp(np.log(max(size, 1)), np.log(sizes), at)))

    def fixed(self, fmt: str, batch: int) -> float:
        """Seconds of one call's fixed cost (0 when not calibrated)."""
        t0 = self.overhead.get("cser" if fmt == "cer" else fmt)
        return 0.0 if not t0 else self._interp(t0, batch)

    @staticmethod
    def work(fmt: str, shape: tuple[int, int], nnz: int, batch: int) -> int:
        m, n = shape
        return (m * n if fmt == "dense" else nnz) * max(batch, 1)

    def predict(self, fmt: str, shape: tuple[int, int], nnz: int, batch: int = 1,
                nbytes: int | None = None) -> float:
        """Seconds for one product of a ``fmt`` matrix with ``nnz`` stored elements (and
        ``nbytes`` bytes of arrays, for the bandwidth floor; None: no floor)."""
        size = shape[0] * shape[1]
        t = self.work(fmt, shape, nnz, batch) / self.rate(fmt, batch, size)
        if nbytes is not None and self.bandwidth and nbytes > self.cache_bytes:
            t = max(t, (nbytes - self.cache_bytes) / self.bandwidth)
        return self.fixed(fmt, batch) + t

    @classmethod
    def calibrate(cls, threads: int = 1,
                  shapes: tuple[tuple[int, int], ...] = TIME_MODEL_SHAPES,
                  repeats: int = 15, seed: int = 0) -> TimeModel:
        """Measure dense/CSR/CSER throughputs and per-call costs on this machine (~1 s)."""

        import numpy as np
        import torch

        from .commands import prune_and_quantize
        from .cser import CSER
        from .csr import CSR

        rng = np.random.default_rng(seed)

        def formats(w: np.ndarray) -> dict[str, Any]:
            return {"dense": _TorchDense(w), "csr": CSR.from_dense(w), "cser": CSER.from_dense(w)}

        # one stored element, ω0 = 0 (a lone 0.5 would be ω0 itself: the implicit-value path)
        tiny = formats(np.array([[0.5, 0.0]], np.float32))
        torch_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:  # BLAS gets the same number of threads as our kernels
            from threadpoolctl import threadpool_limits

            limit = threadpool_limits(limits=threads)
        except ImportError:
            limit = None
        try:
            fixed = cls._measure(tiny, rng, threads, repeats)
            rates: dict[str, Rates] = {k: {} for k in tiny}
            for shape in shapes:
                # a real pruned layer's skewed value counts (most kept weights sit just above
                # the threshold) set how long CER/CSER groups are
                gauss = rng.standard_normal(shape).astype(np.float32)
                mats = formats(prune_and_quantize(gauss, 0.9, 4))
                total = cls._measure(mats, rng, threads, repeats)
                for k, mat in mats.items():
                    rates[k][shape[0] * shape[1]] = tuple(
                        cls.work(k, shape, mat.nnz, b) / max(t - t0, 1e-3 * t)
                        for b, t, t0 in zip(TIME_MODEL_BATCHES, total[k], fixed[k], strict=True))
            bandwidth = cls._stream_rate(repeats)
        finally:
            torch.set_num_threads(torch_threads)
            if limit is not None:
                limit.restore_original_limits()
        return cls(rates, overhead=fixed, bandwidth=bandwidth)

    @staticmethod
    def _stream_rate(repeats: int, nbytes: int = 1 << 26) -> float:
        """Bytes per second one thread reads from beyond its L2: the fastest of a few sums
        over a 64 MB float32 array. Where a large shared L3 holds it, that is L3's rate for
        one thread — where a layer of a few MB is streamed from too."""
        import time

        import numpy as np

        a = np.ones(nbytes // 4, np.float32)
        best = float("inf")
        for _ in range(max(repeats // 3, 3)):
            t0 = time.perf_counter()
            a.sum()
            best = min(best, time.perf_counter() - t0)
        return nbytes / best

    @staticmethod
    def _measure(mats, rng, threads, repeats) -> dict[str, tuple[float, ...]]:
        """Fastest of 2 × ``repeats`` timings per format and batch, each format timed in a
        block of its own (two rounds over the formats).

        The minimum, not the median: on a shared machine other processes only ever add time.
        Blocks, not formats interleaved call by call: interleaved, each format ran on caches
        the others had just filled with their own arrays, which favoured CSER's smaller ones
        — on the Intel machine ``auto`` then chose CSER for layers where CSR, timed on its
        own as ``benchmarks/formats.py`` times every layer, was 12–20% faster (calibrated
        both ways against one benchmark run's per-layer times: worst choice 1.20× → 1.15×
        the fastest format). Three calibrations in a row gave the same choices.
        """
        import time

        import numpy as np

        out: dict[str, list[float]] = {k: [] for k in mats}
        for b in TIME_MODEL_BATCHES:
            xs = {name: rng.standard_normal((mat.shape[1], b) if b > 1 else mat.shape[1])
                  .astype(np.float32) for name, mat in mats.items()}
            best = {k: float("inf") for k in mats}
            for _ in range(2):
                for name, mat in mats.items():
                    x = xs[name]
                    mat.dot(x, threads=threads)  # operands into cache, kernels loaded
                    mat.dot(x, threads=threads)
                    inner = 20 if mat.nnz < 100 else 2
                    for _ in range(repeats):
                        t0 = time.perf_counter()
                        for _ in range(inner):
                            mat.dot(x, threads=threads)
                        best[name] = min(best[name], (time.perf_counter() - t0) / inner)
            for name in mats:
                out[name].append(best[name])
        return {k: tuple(v) for k, v in out.items()}


def l2_cache_bytes(default: int = 1 << 20) -> int:
    """Per-core L2 size from Linux sysfs (``default`` where it cannot be read)."""
    import glob

    for path in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
        try:
            with open(f"{path}/level") as f:
                level = f.read().strip()
            with open(f"{path}/size") as f:
                size = f.read().strip()
        except OSError:
            continue
        if level == "2" and size[:-1].isdigit():
            scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1].upper(), 0)
            if scale:
                return int(size[:-1]) * scale
    return default


def stream_bytes(fmt: str, shape: tuple[int, int], nnz: int, groups: int = 0,
                 distinct: int = 16) -> int:
    """Bytes of a format's arrays, computed from its counts without building it (the
    layouts of ``CSR`` and ``CSER``: float32 values, smallest unsigned index types):
    dense 4·m·n; CSR nnz·(4 + col) + (m + 1)·ptr; CSER nnz·col + groups·value index +
    (groups + 1)·ptr + (m + 1)·ptr + 4·distinct (``groups``: (row, value) groups)."""
    m, n = shape
    col = index_dtype(max(n - 1, 0)).itemsize
    if fmt == "dense":
        return 4 * m * n
    if fmt == "csr":
        return nnz * (4 + col) + (m + 1) * index_dtype(nnz).itemsize
    if fmt != "cser":
        raise InvalidOption(f"stream_bytes knows dense, csr and cser, not {fmt!r}")
    vi = index_dtype(max(distinct - 1, 0)).itemsize
    return (nnz * col + groups * vi + (groups + 1) * index_dtype(nnz).itemsize
            + (m + 1) * index_dtype(groups).itemsize + 4 * distinct)


class _TorchDense:
    """The dense competitor as ``convert_model`` leaves it: a float32 tensor and torch's
    matmul (``dot`` takes numpy like the formats; the conversion shares memory)."""

    def __init__(self, w: Any):
        import torch

        self.weight = torch.from_numpy(w)
        self.shape = tuple(w.shape)
        self.nnz = int(w.size)

    def dot(self, x: Any, threads: int | None = None) -> Any:
        import torch

        return self.weight @ torch.from_numpy(x)


_DEFAULT_MODEL: dict[int, TimeModel] = {}


def default_time_model(threads: int = 1) -> TimeModel:
    """The calibrated model for this process (measured once per thread count, then kept)."""
    if threads not in _DEFAULT_MODEL:
        _DEFAULT_MODEL[threads] = TimeModel.calibrate(threads=threads)
    return _DEFAULT_MODEL[threads]
