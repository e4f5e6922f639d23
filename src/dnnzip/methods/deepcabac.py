"""DeepCABAC: rate–distortion quantization on a uniform grid + context-adaptive binary
arithmetic coding (SPEC §2.2, §2.3).

``DeepCabacCodec`` codes one tensor: levels from plain rounding (λ = 0), greedy RDOQ against
the live contexts (λ > 0, ``quant.rdoq``) or dependent / trellis-coded quantization (``dq``,
``quant.dependent``), then the DeepCABAC binarization and arithmetic coder
(``coding.cabac``). The payload is the self-describing cabac stream (step size, g, context
mode, chunking, element count, per-chunk lengths and checksums); ``decode`` checks it against
the shape it is given.

``DeepCabacMethod`` picks the step per tensor: a manual ``step`` / ``qp`` (Δ = 2^(qp/4), the
NNCodec convention), or a global QP searched in ``prepare`` to meet ``target_ratio`` or
``max_error``, with per-tensor offsets from the importance (Δ_t ∝ 1/√F̄_t, which minimises
Σ_t F̄_t·n_t·Δ_t²/12 at a fixed total rate).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import numpy as np
from numba import njit, prange

from ..codec import Codec, CorruptPayload, InvalidOption, Quantized, register
from ..coding import cabac
from ..quant import stepsize
from ..quant.dependent import dq_encode, dq_recon
from ..quant.rdoq import rdoq_encode
from .base import Method, register_method

#: defaults measured on all-MiniLM-L6-v2 (benchmarks/deepcabac_contexts.py, deepcabac_curve.py)
DEFAULT_LAM = 0.1
DEFAULT_DQ_LAM = 0.2


class EncodeInfo:
    """What one encode produced (for reports and benchmarks). ``recon`` (the integer
    reconstructions r, value = r·Δ) is derived from the levels on first use: most encodes
    never read it, and it is a serial pass over the tensor."""

    def __init__(self, nbytes: int, ideal_bits: float, levels: np.ndarray,
                 recon: np.ndarray | None = None, dq_chunk: int = 0) -> None:
        self.nbytes = nbytes
        self.ideal_bits = ideal_bits
        self.levels = levels
        self._recon = recon
        self._dq_chunk = dq_chunk

    @property
    def recon(self) -> np.ndarray:
        if self._recon is None:
            self._recon = dq_recon(self.levels, self._dq_chunk)
        return self._recon


@njit(cache=True, parallel=True, nogil=True)
def _scan(w):
    """(count of non-finite values, max |w| over the finite ones, Σ|w| in float64 — the
    level scale of ``cabac.auto_g`` — over the finite ones) in one parallel pass."""
    nb = 64
    block = -(-w.size // nb)
    bad = np.zeros(nb, dtype=np.int64)
    top = np.zeros(nb, dtype=np.float32)
    total = np.zeros(nb, dtype=np.float64)
    for b in prange(nb):
        c = 0
        m = np.float32(0.0)
        t = 0.0
        for i in range(b * block, min(w.size, (b + 1) * block)):
            v = w[i]
            if not np.isfinite(v):
                c += 1
            else:
                m = max(m, abs(v))
                t += abs(v)
        bad[b] = c
        top[b] = m
        total[b] = t
    return bad.sum(), top.max(), total.sum()


def _float_view(array: np.ndarray, name: str = "") -> tuple[np.ndarray, float, float]:
    """Flat contiguous float32 view of ``array``, its max |w| and mean |w| (NaN/Inf
    refused)."""
    a = np.asarray(array)
    if a.dtype.kind != "f" and not str(a.dtype).startswith("bfloat"):
        raise InvalidOption(f"DeepCABAC codes float tensors, got {a.dtype}{_tag(name)}")
    a = np.ascontiguousarray(a, dtype=np.float32).reshape(-1)
    if not a.size:
        return a, 0.0, 0.0
    bad, peak, total = _scan(a)
    if bad:
        raise InvalidOption(f"tensor{_tag(name)} has {int(bad)} NaN/Inf values; refusing to "
                            f"code it")
    return a, float(peak), float(total) / a.size


def _tag(name: str) -> str:
    return f" {name!r}" if name else ""


def normalized_importance(importance: np.ndarray | None, size: int, floor: float
                          ) -> np.ndarray | None:
    """F_i / mean(F) mixed with a floor: (1 − floor)·F_i/F̄ + floor (mean stays 1).

    The floor keeps weights whose Fisher estimate is 0 only because the calibration data
    never exercised them (e.g. embedding rows of unseen tokens) from being zeroed outright."""
    if importance is None:
        return None
    f = np.ascontiguousarray(importance, dtype=np.float32).reshape(-1)
    if f.size != size:
        raise InvalidOption(f"importance has {f.size} values for a tensor of {size}")
    if not np.isfinite(f).all() or (f < 0).any():
        raise InvalidOption("importance must be finite and non-negative")
    mean = float(f.mean(dtype=np.float64)) if f.size else 0.0
    if mean <= 0.0:
        return None
    return ((1.0 - floor) * (f / np.float32(mean)) + np.float32(floor)).astype(np.float32)


def encode_array(array: np.ndarray, step: float, *, lam: float = 0.0, dq: bool = False,
                 g: int | None = None, ctx_mode: int = 0, chunk: int = cabac.DEFAULT_CHUNK,
                 shifts: tuple[int, int] = cabac.DEFAULT_SHIFTS, row_len: int | None = None,
                 importance: np.ndarray | None = None, importance_floor: float = 0.5,
                 measure: bool = False, name: str = "") -> tuple[bytes, EncodeInfo]:
    """Quantize and code ``array`` (any shape) with step Δ. Returns (stream, info).

    Rows are the first dimension unless ``row_len`` is given; g None picks the unary length
    from the level scale mean |w|/Δ (``cabac.auto_g``; stored in the stream)."""
    w, wmax, mean_abs = _float_view(array, name)
    if not (isinstance(step, (int, float)) and math.isfinite(step) and step > 0):
        raise InvalidOption(f"step must be a positive finite number, got {step!r}")
    if not (math.isfinite(lam) and lam >= 0):
        raise InvalidOption(f"lam must be >= 0, got {lam!r}")
    shape = np.shape(array)
    rl = row_length(shape) if row_len is None else int(row_len)
    if g is None:
        g = cabac.auto_g(mean_abs / step)
    params = cabac.StreamParams(n=w.size, row_len=rl, step=float(step), g=int(g),
                                ctx_mode=int(ctx_mode), dq=bool(dq),
                                chunk=cabac.balanced_chunk(w.size, int(chunk)),
                                shifts=(int(shifts[0]), int(shifts[1])))
    params.validate()
    # max |w/Δ| = fl(max|w| / Δ): float division by a positive constant is monotone
    sc = np.float32(step)
    peak = float(np.float32(wmax) / sc)
    limit = cabac.MAX_LEVEL - 2
    if peak > limit:
        raise InvalidOption(f"step {step:g} is too small for tensor{_tag(name)} (max |w|/step = "
                            f"{peak:.3g} > {limit})")
    fw = normalized_importance(importance, w.size, importance_floor)
    if w.size == 0:
        stream = cabac.pack_stream(params, np.zeros(0, np.uint8), np.zeros(1, np.int64),
                                   np.zeros(0, np.int64), np.zeros(0, np.int64))
        return stream, EncodeInfo(len(stream), 0.0, np.zeros(0, np.int32), np.zeros(0, np.int32))
    if not dq and lam == 0.0:
        levels = np.rint(w / sc).astype(np.int32)
        stream, ideal = cabac.encode_levels(levels, params, measure=measure)
        return stream, EncodeInfo(len(stream), ideal, levels, levels)
    per = 2.0
    while True:
        buf, offs = cabac.alloc_chunks(w.size, params.chunk, per)
        runner = dq_encode if dq else rdoq_encode
        levels, nbytes, checks, ideal = runner(w, sc, fw, rl, params.chunk, lam, params.g,
                                               params.ctx_mode, params.shifts, buf, offs,
                                               measure)
        cap = np.diff(offs)
        if np.all(nbytes <= cap):
            break
        per = float(np.max(nbytes / np.maximum(cap - 64, 1))) * per + 1.0
    stream = cabac.pack_stream(params, buf, offs, nbytes, checks)
    if dq:
        return stream, EncodeInfo(len(stream), float(ideal.sum()), levels, None, params.chunk)
    return stream, EncodeInfo(len(stream), float(ideal.sum()), levels, levels)


def row_length(shape: tuple[int, ...]) -> int:
    return cabac.row_length(tuple(int(s) for s in shape))


def decode_stream(data: bytes, shape: tuple[int, ...], as_float: bool = False
                  ) -> tuple[cabac.StreamParams, np.ndarray]:
    """Parse + decode (integer reconstructions, or float32 values with ``as_float``),
    checking the stream's geometry against ``shape``."""
    params, r = cabac.decode_levels(data, as_float)
    n = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
    if params.n != n:
        raise CorruptPayload(f"DeepCABAC stream holds {params.n} values, shape {tuple(shape)} "
                             f"needs {n}")
    if params.row_len != row_length(tuple(shape)):
        raise CorruptPayload(f"DeepCABAC stream row length {params.row_len} does not match "
                             f"shape {tuple(shape)}")
    return params, r


@register
class DeepCabacCodec(Codec):
    """One tensor: uniform grid Δ, RDOQ / dependent quantization, DeepCABAC coding.

    Config: step (Δ), lam (λ, relative to F̄·Δ²), dq, g, ctx_mode, chunk, shifts,
    importance_floor. The importance array itself is an encode-time input
    (``codec.importance = F``), not part of the config: decoding never needs it."""

    codec_id: ClassVar[str] = "deepcabac"

    def __init__(self, step: float, lam: float = DEFAULT_LAM, dq: bool = True,
                 g: int | None = None, ctx_mode: int = 0, chunk: int = cabac.DEFAULT_CHUNK,
                 shifts: tuple[int, int] | list[int] = cabac.DEFAULT_SHIFTS,
                 importance_floor: float = 0.5) -> None:
        if not (isinstance(step, (int, float)) and math.isfinite(step) and step > 0):
            raise InvalidOption(f"step must be a positive finite number, got {step!r}")
        if not 0.0 <= importance_floor <= 1.0:
            raise InvalidOption(f"importance_floor must be in [0, 1], got {importance_floor}")
        self.step = float(step)
        self.lam = float(lam)
        self.dq = bool(dq)
        self.g = None if g is None else int(g)
        self.ctx_mode = int(ctx_mode)
        self.chunk = int(chunk)
        self.shifts = (int(shifts[0]), int(shifts[1]))
        self.importance_floor = float(importance_floor)
        self.importance: np.ndarray | None = None
        self.last_info: EncodeInfo | None = None
        cabac.StreamParams(n=0, row_len=1, step=self.step,
                           g=cabac.DEFAULT_G if self.g is None else self.g, ctx_mode=self.ctx_mode,
                           dq=self.dq, chunk=self.chunk, shifts=self.shifts).validate()
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise InvalidOption(f"lam must be >= 0, got {lam!r}")

    def encode(self, array: np.ndarray) -> bytes:
        stream, info = encode_array(array, self.step, lam=self.lam, dq=self.dq, g=self.g,
                                    ctx_mode=self.ctx_mode, chunk=self.chunk, shifts=self.shifts,
                                    importance=self.importance,
                                    importance_floor=self.importance_floor)
        self.last_info = info
        return stream

    def encode_with_stats(self, array: np.ndarray) -> tuple[bytes, dict[str, Any]]:
        """``encode`` + report figures: step, bits/weight, SNR, order-0 entropy of the levels
        (total bits, the yardstick of SPEC §2.2), distinct values, sparsity."""
        data = self.encode(array)
        info = self.last_info
        w = np.asarray(array, dtype=np.float32).reshape(-1)
        n = w.size
        stats: dict[str, Any] = {"step": self.step, "dq": self.dq, "bits_per_weight":
                                 8.0 * len(data) / max(n, 1)}
        if n:
            r = info.recon
            rec = r.astype(np.float32) * np.float32(self.step)
            d = (w - rec).astype(np.float64)
            den = float(np.dot(d, d))
            num = float(np.dot(w.astype(np.float64), w.astype(np.float64)))
            stats["snr_db"] = 10.0 * math.log10(num / den) if den > 0 and num > 0 else None
            lo, hi = int(r.min()), int(r.max())
            if hi - lo < (1 << 22):
                counts = np.bincount(r.astype(np.int64) - lo)
                counts = counts[counts > 0]
            else:
                counts = np.unique(r, return_counts=True)[1]
            p = counts / n
            stats["entropy_bits"] = float(-(counts * np.log2(p)).sum())
            stats["distinct"] = int(counts.size)
            stats["sparsity"] = float(np.count_nonzero(r == 0) / n)
        return data, stats

    def decode(self, data: bytes, shape: tuple[int, ...]) -> np.ndarray:
        return decode_stream(data, shape, as_float=True)[1].reshape(shape)

    def decode_quantized(self, data: bytes, shape: tuple[int, ...]) -> Quantized:
        params, r = decode_stream(data, shape)
        values, idx = np.unique(r, return_inverse=True)
        dtype = np.uint8 if values.size <= 256 else np.uint16 if values.size <= 65536 else np.uint32
        book = (values.astype(np.float32) * np.float32(params.step)).astype(np.float32)
        return Quantized(idx.astype(dtype).reshape(shape), book)

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, "step": self.step, "lam": self.lam, "dq": self.dq,
                "g": self.g, "ctx_mode": self.ctx_mode, "chunk": self.chunk,
                "shifts": list(self.shifts), "importance_floor": self.importance_floor}


def qp_to_step(qp: float) -> float:
    """Δ = 2^(qp/4) (NNCodec's convention with qp_density 2: qp −32 → Δ = 2^−8)."""
    return float(2.0 ** (qp / 4.0))


@register_method
class DeepCabacMethod(Method):
    """``--method deepcabac``: choose Δ per tensor, then code with ``DeepCabacCodec``.

    Options (CLI keyword arguments): ``step`` (Δ for every tensor) or ``qp`` (global QP,
    Δ = 2^(qp/4)); or a target found in ``prepare``: ``target_ratio`` (float32 bytes / coded
    bytes over the tensors this method codes) or ``max_error`` (relative MSE
    Σ(w − ŵ)²/Σw² over them; ``min_snr_db`` is the same in dB). ``lam`` (λ ≥ 0, relative
    to F̄Δ²), ``dq`` (dependent quantization), ``chunk_size``, ``importance``
    (name → per-weight Fisher diagonal, same shape as the tensor), ``nonweight_qp`` (QP of
    the 1-D tensors — biases, norms — coded by plain rounding, λ = 0, no DQ, as NNCodec's
    option of that name; default: they are stored as they are). Without any target the
    default is ``max_error`` = 1e-3 (30 dB)."""

    name: ClassVar[str] = "deepcabac"

    def __init__(self, step: float | None = None, qp: float | None = None,
                 target_ratio: float | None = None, max_error: float | None = None,
                 min_snr_db: float | None = None, lam: float | None = None,
                 dq: bool | None = True,
                 chunk_size: int | None = None, importance: Mapping[str, np.ndarray] | None = None,
                 g: int | None = None, ctx_mode: int = 0, importance_floor: float = 0.5,
                 offsets: Mapping[str, float] | None = None,
                 nonweight_qp: float | None = None, **other: Any) -> None:
        stray = sorted(k for k, v in other.items() if v is not None and v is not False)
        if stray:
            raise InvalidOption(f"option(s) {', '.join(stray)} do not apply to --method deepcabac")
        dq = True if dq is None else dq
        if min_snr_db is not None:
            if max_error is not None:
                raise InvalidOption("give max_error or min_snr_db, not both")
            max_error = 10.0 ** (-float(min_snr_db) / 10.0)
        given = [o for o, v in (("step", step), ("qp", qp), ("target_ratio", target_ratio),
                                ("max_error", max_error)) if v is not None]
        if len(given) > 1:
            raise InvalidOption(f"choose one of step / qp / target_ratio / max_error, got "
                                f"{', '.join(given)}")
        if step is not None and not (math.isfinite(step) and step > 0):
            raise InvalidOption(f"step must be a positive number, got {step}")
        if qp is not None and not (math.isfinite(qp) and -200 <= qp <= 80):
            raise InvalidOption(f"qp must be in [-200, 80], got {qp}")
        if target_ratio is not None and not (math.isfinite(target_ratio) and target_ratio > 1):
            raise InvalidOption(f"target ratio must be > 1, got {target_ratio}")
        if max_error is not None and not (0 < max_error < 1):
            raise InvalidOption(f"max_error is a relative MSE in (0, 1), got {max_error}")
        if lam is not None and not (math.isfinite(lam) and lam >= 0):
            raise InvalidOption(f"lam must be >= 0, got {lam}")
        if chunk_size is not None and chunk_size < 1:
            raise InvalidOption(f"chunk size must be >= 1, got {chunk_size}")
        if nonweight_qp is not None and not (math.isfinite(nonweight_qp)
                                             and -200 <= nonweight_qp <= 80):
            raise InvalidOption(f"nonweight_qp must be in [-200, 80], got {nonweight_qp}")
        if not given:
            max_error = 1e-3
        self.step = step
        self.qp = qp
        self.target_ratio = target_ratio
        self.max_error = max_error
        self.dq = bool(dq)
        self.lam = float(lam) if lam is not None else (DEFAULT_DQ_LAM if self.dq else DEFAULT_LAM)
        self.chunk = int(chunk_size) if chunk_size else cabac.DEFAULT_CHUNK
        self.g = None if g is None else int(g)
        self.ctx_mode = int(ctx_mode)
        self.importance_floor = float(importance_floor)
        self.importance = dict(importance) if importance else {}
        self.offsets: dict[str, float] = dict(offsets) if offsets else {}
        self.nonweight_qp = None if nonweight_qp is None else float(nonweight_qp)
        self.global_qp: float | None = qp
        self.search: stepsize.SearchResult | None = None
        # validate the coder options once, up front
        self._codec(1.0)

    # -- helpers

    def _codec(self, step: float) -> DeepCabacCodec:
        return DeepCabacCodec(step=step, lam=self.lam, dq=self.dq, g=self.g,
                              ctx_mode=self.ctx_mode, chunk=self.chunk,
                              importance_floor=self.importance_floor)

    def _sample_encoder(self, sample: stepsize.TensorSample, step: float
                        ) -> tuple[int, np.ndarray]:
        """Code a search sample (with the matching slice of the importance)."""
        imp = self.importance.get(sample.name)
        f = None
        if imp is not None:
            f = np.asarray(imp, dtype=np.float32).reshape(-1)[sample.index]
        stream, info = encode_array(sample.values, step, lam=self.lam, dq=self.dq, g=self.g,
                                    ctx_mode=self.ctx_mode, chunk=self.chunk,
                                    row_len=sample.row_len, importance=f,
                                    importance_floor=self.importance_floor)
        return len(stream), info.recon

    def step_for(self, name: str, array: np.ndarray | None = None) -> float:
        """Δ of tensor ``name``: global QP + its offset, or the manual step."""
        if self.step is not None:
            return float(self.step)
        if self.global_qp is None:
            # prepare() was not run: meet max_error / the default per tensor from its RMS
            # (uniform noise Δ²/12 = E·mean(w²); dependent quantization halves the index grid)
            if array is None:
                raise InvalidOption("no step: call prepare() first or give step/qp")
            err = self.max_error if self.max_error is not None else 1e-3
            ms = float(np.mean(np.square(array, dtype=np.float64))) if array.size else 1.0
            step = math.sqrt(12.0 * err * max(ms, 1e-30))
            return step / 2.0 if self.dq else step
        return qp_to_step(self.global_qp + self.offsets.get(name, 0.0))

    # -- Method API

    def prepare(self, tensors: Iterable[tuple[str, np.ndarray]]) -> None:
        """Global pass: per-tensor offsets from importance, then the global QP that meets the
        target (bisection on coded samples of every tensor, see ``quant.stepsize``)."""
        if self.step is not None:
            return
        if self.qp is not None and (self.offsets or not self.importance):
            return  # QP fixed (given, or found by fit_to_metric) and offsets known
        samples = []
        for name, array in tensors:
            w, _, _ = _float_view(array, name)
            samples.append(stepsize.TensorSample.take(name, w, row_length(np.shape(array))))
        if not self.offsets and self.importance:
            means = {n: float(np.mean(self.importance[n], dtype=np.float64))
                     for n in (s.name for s in samples) if n in self.importance}
            self.offsets = stepsize.importance_offsets(means, {s.name: s.n for s in samples})
        if self.qp is not None:
            return
        self.search = stepsize.search_global_qp(
            samples, self._sample_encoder, self.offsets, target_ratio=self.target_ratio,
            max_error=self.max_error, qp_to_step=qp_to_step)
        self.global_qp = self.search.qp

    def codec_for(self, name: str, array: np.ndarray) -> Codec:
        codec = self._codec(self.step_for(name, array))
        imp = self.importance.get(name)
        if imp is not None:
            if np.size(imp) != np.size(array):
                raise InvalidOption(f"importance of {name!r} has {np.size(imp)} values, the "
                                    f"tensor {np.size(array)}")
            codec.importance = np.asarray(imp, dtype=np.float32)
        return codec

    def vector_codec(self, name: str, array: np.ndarray) -> Codec | None:
        if self.nonweight_qp is None:
            return None
        return DeepCabacCodec(step=qp_to_step(self.nonweight_qp), lam=0.0, dq=False, g=self.g,
                              ctx_mode=0, chunk=self.chunk)

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"method": self.name, "dq": self.dq, "lam": self.lam, "g": self.g,
                             "ctx_mode": self.ctx_mode, "chunk_size": self.chunk,
                             "importance": bool(self.importance)}
        for key in ("step", "target_ratio", "max_error", "nonweight_qp"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        if self.global_qp is not None:
            d["qp"] = self.global_qp
        if self.offsets:
            d["qp_offsets"] = {k: round(v, 3) for k, v in self.offsets.items()}
        if self.search is not None:
            d["search"] = self.search.as_dict()
        return d

    # -- accuracy budget (Python API)

    def fit_to_metric(self, tensors: Mapping[str, np.ndarray],
                      evaluate: Callable[[dict[str, np.ndarray]], float], min_metric: float,
                      qp_range: tuple[float, float] = (-64.0, 0.0), tol: float = 0.25
                      ) -> stepsize.SearchResult:
        """Largest global QP (smallest stream) whose restored tensors keep
        ``evaluate(restored) >= min_metric`` — e.g. accuracy ≥ baseline − budget. ``evaluate``
        receives name → restored float32 array for every tensor of ``tensors``."""
        if not self.offsets and self.importance:
            means = {n: float(np.mean(self.importance[n], dtype=np.float64))
                     for n in tensors if n in self.importance}
            self.offsets = stepsize.importance_offsets(
                means, {n: int(np.size(a)) for n, a in tensors.items()})

        def trial(qp: float) -> tuple[float, int]:
            self.global_qp = qp
            restored, total = {}, 0
            for name, array in tensors.items():
                codec = self.codec_for(name, array)
                data = codec.encode(array)
                total += len(data)
                restored[name] = codec.decode(data, np.shape(array))
            return float(evaluate(restored)), total

        result = stepsize.search_metric(trial, min_metric, qp_range, tol)
        # pin the QP: a later prepare() keeps it instead of searching a ratio / error target
        self.qp = self.global_qp = result.qp
        self.target_ratio = self.max_error = None
        self.search = result
        return result
