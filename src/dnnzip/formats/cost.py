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

from ..codec import InvalidOption
from ._base import Costs

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


class TimeModel:
    """Predicted time of a product from its work and this machine's measured throughputs.

    t(format, B) = t0(format, B) + work(format, B) / rate(format, B), with work the
    multiply-adds a kernel performs: dense m·n·B, CSR nnz·B, CER/CSER nnz·B (each stored
    element added once per column), and t0 the fixed cost of one call (checks, allocation,
    dispatch) — measured on a 1 × 2 matrix, it decides small layers (a 100 × 300 mat-vec is
    ~1 µs of work). Rates (work units per second) are measured by ``calibrate`` on synthetic
    90%-sparse 4-bit matrices, because they depend on the CPU: a dense BLAS product gains
    a lot from batching, a gather-bound sparse one little.
    """

    def __init__(self, rates: dict[str, tuple[float, ...]],
                 batches: tuple[int, ...] = TIME_MODEL_BATCHES,
                 overhead: dict[str, tuple[float, ...]] | None = None):
        self.rates = {k: tuple(float(r) for r in v) for k, v in rates.items()}
        self.batches = tuple(batches)
        self.overhead = {k: tuple(float(t) for t in v) for k, v in (overhead or {}).items()}

    def _interp(self, table: tuple[float, ...], batch: int) -> float:
        import numpy as np

        return float(np.exp(np.interp(np.log(max(batch, 1)), np.log(self.batches),
                                      np.log(table))))

    def rate(self, fmt: str, batch: int) -> float:
        return self._interp(self.rates["cser" if fmt == "cer" else fmt], batch)

    def fixed(self, fmt: str, batch: int) -> float:
        """Seconds of one call's fixed cost (0 when not calibrated)."""
        t0 = self.overhead.get("cser" if fmt == "cer" else fmt)
        return 0.0 if not t0 else self._interp(t0, batch)

    @staticmethod
    def work(fmt: str, shape: tuple[int, int], nnz: int, batch: int) -> int:
        m, n = shape
        return (m * n if fmt == "dense" else nnz) * max(batch, 1)

    def predict(self, fmt: str, shape: tuple[int, int], nnz: int, batch: int = 1) -> float:
        """Seconds for one product of a ``fmt`` matrix with ``nnz`` stored elements."""
        return self.fixed(fmt, batch) + self.work(fmt, shape, nnz, batch) / self.rate(fmt, batch)

    @classmethod
    def calibrate(cls, threads: int = 1, shape: tuple[int, int] = (768, 768),
                  repeats: int = 15, seed: int = 0) -> TimeModel:
        """Measure dense/CSR/CSER throughputs and per-call costs on this machine (~1 s)."""

        import numpy as np

        from .cser import CSER
        from .csr import CSR
        from .dense import Dense

        rng = np.random.default_rng(seed)
        levels = rng.integers(-7, 8, size=shape) * (rng.random(shape) < 0.1)
        w = (levels * 0.01).astype(np.float32)
        mats = {"dense": Dense(w), "csr": CSR.from_dense(w), "cser": CSER.from_dense(w)}
        # one stored element, ω0 = 0 (a lone 0.5 would be ω0 itself: the implicit-value path)
        one = np.array([[0.5, 0.0]], np.float32)
        tiny = {"dense": Dense(one), "csr": CSR.from_dense(one), "cser": CSER.from_dense(one)}
        try:  # BLAS gets the same number of threads as our kernels
            from threadpoolctl import threadpool_limits

            limit = threadpool_limits(limits=threads)
        except ImportError:
            limit = None
        try:
            fixed = cls._measure(tiny, rng, threads, repeats)
            total = cls._measure(mats, rng, threads, repeats)
        finally:
            if limit is not None:
                limit.restore_original_limits()
        rates = {k: tuple(cls.work(k, shape, mats[k].nnz, b) / max(t - t0, 1e-3 * t)
                          for b, t, t0 in zip(TIME_MODEL_BATCHES, total[k], fixed[k],
                                              strict=True))
                 for k in mats}
        return cls(rates, overhead=fixed)

    @staticmethod
    def _measure(mats, rng, threads, repeats) -> dict[str, tuple[float, ...]]:
        """Fastest of ``repeats`` timings per format and batch, the formats interleaved.

        The minimum, not the median: on a shared machine other processes only ever add time,
        and interleaving gives every format the same conditions, so the ranking — all that
        ``convert_model(format="auto")`` uses — is stable from one calibration to the next.
        """
        import time

        import numpy as np

        out: dict[str, list[float]] = {k: [] for k in mats}
        for b in TIME_MODEL_BATCHES:
            xs = {}
            for name, mat in mats.items():
                n = mat.shape[1]
                xs[name] = rng.standard_normal((n, b) if b > 1 else n).astype(np.float32)
                mat.dot(xs[name], threads=threads)
                mat.dot(xs[name], threads=threads)
            best = {k: float("inf") for k in mats}
            for _ in range(repeats):
                for name, mat in mats.items():
                    inner = 20 if mat.nnz < 100 else 2
                    x = xs[name]
                    t0 = time.perf_counter()
                    for _ in range(inner):
                        mat.dot(x, threads=threads)
                    best[name] = min(best[name], (time.perf_counter() - t0) / inner)
            for name in mats:
                out[name].append(best[name])
        return {k: tuple(v) for k, v in out.items()}


_DEFAULT_MODEL: dict[int, TimeModel] = {}


def default_time_model(threads: int = 1) -> TimeModel:
    """The calibrated model for this process (measured once per thread count, then kept)."""
    if threads not in _DEFAULT_MODEL:
        _DEFAULT_MODEL[threads] = TimeModel.calibrate(threads=threads)
    return _DEFAULT_MODEL[threads]
