"""Automatic step-size search: find Δ (a global QP with per-tensor offsets) for a target.

Steps follow Δ_t = 2^((QP + o_t)/4). The offsets o_t put the bits where they matter: for a
weighted distortion Σ_t F̄_t·n_t·Δ_t²/12 at a fixed total rate Σ_t n_t·(h_t − log2 Δ_t), the
Lagrangian optimum has F̄_t·Δ_t² equal across tensors, i.e. o_t = 2·log2(F̄_ref / F̄_t) with
F̄_t the tensor's mean importance (no importance: all offsets 0, one global Δ — optimal for
the unweighted weight MSE).

The global QP is then found by bisection (rate falls and error grows monotonically with QP):

* ``target_ratio`` / ``max_error``: each trial codes a fixed sample of whole rows of every
  tensor (≤ ``SAMPLE`` values each) with the real coder and scales bytes and squared error
  up to the tensor — the coder's own bit count, not a model of it;
* an accuracy budget: ``search_metric`` calls a user evaluation of the fully restored model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..codec import InvalidOption

SAMPLE = 1 << 16
OFFSET_LIMIT = 24.0
QP_RANGE = (-80.0, 40.0)


@dataclass
class TensorSample:
    """A fixed subset of whole rows (or blocks) of one tensor, used by the search."""

    name: str
    n: int
    values: np.ndarray
    row_len: int
    index: np.ndarray | slice
    sum_sq: float

    @classmethod
    def take(cls, name: str, w: np.ndarray, row_len: int, limit: int = SAMPLE) -> TensorSample:
        w = np.ascontiguousarray(w, dtype=np.float32).reshape(-1)
        sum_sq = float(np.dot(w.astype(np.float64), w.astype(np.float64)))
        if w.size <= limit:
            return cls(name, w.size, w, row_len, slice(None), sum_sq)
        if row_len > limit // 8:
            row_len = limit // 8  # very long rows / 1-D: sample blocks instead of rows
        rows = w.size // row_len
        take = max(1, min(rows, limit // row_len))
        pick = np.unique(np.linspace(0, rows - 1, take).round().astype(np.int64))
        index = (pick[:, None] * row_len + np.arange(row_len)[None, :]).reshape(-1)
        return cls(name, w.size, w[index], row_len, index, sum_sq)

    @property
    def scale(self) -> float:
        return self.n / max(self.values.size, 1)


@dataclass
class SearchResult:
    """Outcome of a search: the chosen QP and what each trial measured."""

    qp: float
    achieved: float
    target: float
    kind: str
    trials: list[dict[str, float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"qp": self.qp, "kind": self.kind, "target": self.target,
                "achieved": self.achieved, "trials": len(self.trials)}


def importance_offsets(mean_importance: Mapping[str, float], sizes: Mapping[str, int]
                       ) -> dict[str, float]:
    """QP offsets o_t = 2·log2(F̄_ref / F̄_t), F̄_ref the size-weighted geometric mean of the
    positive F̄_t; clamped to ±24 (±6 octaves of Δ); F̄_t = 0 gets the coarsest offset."""
    pos = {n: f for n, f in mean_importance.items() if f > 0 and math.isfinite(f)}
    if not pos:
        return {n: 0.0 for n in mean_importance}
    wsum = sum(sizes.get(n, 1) for n in pos)
    log_ref = sum(sizes.get(n, 1) * math.log2(f) for n, f in pos.items()) / wsum
    out = {}
    for n, f in mean_importance.items():
        if n in pos:
            o = 2.0 * (log_ref - math.log2(f))
            out[n] = float(min(max(o, -OFFSET_LIMIT), OFFSET_LIMIT))
        else:
            out[n] = OFFSET_LIMIT
    return out


Encoder = Callable[[TensorSample, float], tuple[int, np.ndarray]]


def measure(samples: Sequence[TensorSample], encode: Encoder, offsets: Mapping[str, float],
            qp: float, qp_to_step: Callable[[float], float]) -> tuple[float, float, float]:
    """(estimated coded bytes, squared error, Σw²) of all tensors at global ``qp``."""
    nbytes = err = ref = 0.0
    for s in samples:
        step = qp_to_step(qp + offsets.get(s.name, 0.0))
        size, recon = encode(s, step)
        d = s.values.astype(np.float64) - recon.astype(np.float64) * step
        nbytes += size * s.scale
        err += float(np.dot(d, d)) * s.scale
        ref += s.sum_sq
    return nbytes, err, ref


def search_global_qp(samples: Sequence[TensorSample], encode: Encoder,
                     offsets: Mapping[str, float], *, target_ratio: float | None = None,
                     max_error: float | None = None,
                     qp_to_step: Callable[[float], float], tol: float = 0.125,
                     qp_range: tuple[float, float] = QP_RANGE) -> SearchResult:
    """Bisection on the global QP for a compression ratio (float32 bytes / coded bytes) or a
    relative MSE Σ(w − ŵ)²/Σw²; raises ``InvalidOption`` for an unreachable target."""
    if (target_ratio is None) == (max_error is None):
        raise InvalidOption("give exactly one of target_ratio / max_error")
    raw = 4.0 * sum(s.n for s in samples)
    trials: list[dict[str, float]] = []

    def ok(qp: float) -> tuple[bool, float]:
        nbytes, err, ref = measure(samples, encode, offsets, qp, qp_to_step)
        ratio = raw / max(nbytes, 1.0)
        rel = err / ref if ref > 0 else 0.0
        trials.append({"qp": qp, "ratio": ratio, "rel_mse": rel})
        if target_ratio is not None:
            return ratio >= target_ratio, ratio
        return rel <= max_error, rel

    lo, hi = qp_range
    if target_ratio is not None:
        # smallest QP (finest) whose ratio reaches the target
        good_hi, val_hi = ok(hi)
        if not good_hi:
            raise InvalidOption(f"target ratio {target_ratio:g}x is not reachable with "
                                f"DeepCABAC on these tensors (at most {val_hi:.3g}x)")
        good_lo, val = ok(lo)
        if good_lo:
            return SearchResult(lo, val, target_ratio, "ratio", trials)
        best, best_val = hi, val_hi
        while hi - lo > tol:
            mid = 0.5 * (lo + hi)
            good, v = ok(mid)
            if good:
                hi, best, best_val = mid, mid, v
            else:
                lo = mid
        return SearchResult(best, best_val, target_ratio, "ratio", trials)
    good_lo, val_lo = ok(lo)
    if not good_lo:
        raise InvalidOption(f"max_error {max_error:g} is not reachable (best {val_lo:.3g})")
    good_hi, val = ok(hi)
    if good_hi:
        return SearchResult(hi, val, max_error, "rel_mse", trials)
    best, best_val = lo, val_lo
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        good, v = ok(mid)
        if good:
            lo, best, best_val = mid, mid, v
        else:
            hi = mid
    return SearchResult(best, best_val, max_error, "rel_mse", trials)


def search_metric(trial: Callable[[float], tuple[float, int]], min_metric: float,
                  qp_range: tuple[float, float], tol: float = 0.25) -> SearchResult:
    """Largest QP in ``qp_range`` whose ``trial(qp) -> (metric, bytes)`` keeps
    metric ≥ ``min_metric`` (metric assumed to fall as QP grows, e.g. accuracy)."""
    lo, hi = qp_range
    trials: list[dict[str, float]] = []

    def run(qp: float) -> float:
        metric, nbytes = trial(qp)
        trials.append({"qp": qp, "metric": metric, "bytes": nbytes})
        return metric

    m_lo = run(lo)
    if m_lo < min_metric:
        raise InvalidOption(f"metric {min_metric:g} is not reachable: {m_lo:.6g} at the finest "
                            f"step tried (qp {lo:g})")
    best, best_m = lo, m_lo
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        m = run(mid)
        if m >= min_metric:
            lo, best, best_m = mid, mid, m
        else:
            hi = mid
    return SearchResult(best, best_m, min_metric, "metric", trials)
