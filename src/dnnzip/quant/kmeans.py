"""Weight sharing by 1-D k-means (Deep Compression §3).

Lloyd's algorithm in one dimension on *sorted* data: with centroids c_0 < … < c_{k−1},
cluster j is the contiguous run of sorted values between the midpoints
(c_{j−1}+c_j)/2 and (c_j+c_{j+1})/2, so one iteration is a ``searchsorted`` of k−1
boundaries plus k segment sums — O(k log N + N) with no N×k distance matrix.
Initialisation is linear over [min, max], the paper's best choice (it keeps the rare
large weights, which matter most, represented) — with one refinement: empty stretches of
the axis wider than a grid step (the hole that pruning cuts around zero) are squeezed out
first, so no centroid is wasted where no weight lies.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..codec import InvalidOption


def _boundaries(centroids: np.ndarray) -> np.ndarray:
    """Midpoints between neighbouring centroids, as float32 like the data: searchsorted
    would otherwise cast the whole (sorted) data to float64 — 8 bytes per weight."""
    c = centroids.astype(np.float64)
    return ((c[:-1] + c[1:]) * 0.5).astype(np.float32)


def kmeans_1d(
    values: np.ndarray, k: int, iters: int = 100, tol: float = 1e-6
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster ``values`` into at most ``k`` shared values.

    Returns ``(centroids, labels)``: float32 centroids sorted ascending (empty clusters
    dropped, so possibly fewer than k) and the label of every value (smallest unsigned
    integer dtype that fits), with ``centroids[labels]`` the shared reconstruction.
    If there are at most ``k`` distinct values they are used as-is (exact, lossless).
    """
    if k < 1:
        raise InvalidOption(f"k-means needs k >= 1 clusters, got {k}")
    flat = np.asarray(values, dtype=np.float32).reshape(-1)
    if flat.size == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.uint8)
    if not np.isfinite(flat).all():
        raise InvalidOption("k-means input contains NaN or Inf")
    x = np.sort(flat)
    if _count_distinct(x) <= k:  # few distinct values: keep them exactly
        centroids = np.unique(x)
        return centroids, _labels(flat, centroids)

    lo, hi = float(x[0]), float(x[-1])
    centroids = linear_init(x, k)
    scale = max(hi - lo, np.finfo(np.float32).tiny)
    for _ in range(iters):
        starts = np.searchsorted(x, _boundaries(centroids), side="right")
        sums, counts = _segment_sums(x, starts)
        full = counts > 0
        updated = centroids.copy()
        updated[full] = sums[full] / counts[full]
        shift = np.max(np.abs(updated - centroids))
        centroids = updated
        if shift <= tol * scale:
            break
    # final assignment with the final centroids; drop clusters nobody uses
    starts = np.searchsorted(x, _boundaries(centroids), side="right")
    counts = np.diff(np.concatenate(([0], starts, [x.size])))
    centroids = np.unique(centroids[counts > 0].astype(np.float32))
    return centroids, _labels(flat, centroids)


def linear_init(sorted_values: np.ndarray, k: int) -> np.ndarray:
    """k centroids evenly spaced over [min, max] minus the empty gaps wider than
    (max − min)/k: the axis is squeezed, the grid laid, and mapped back."""
    x = sorted_values
    lo, hi = float(x[0]), float(x[-1])
    wide = _wide_gaps(x, (hi - lo) / k)  # at most k such gaps
    # squeezed coordinate of each wide gap's upper end: u = x − (sum of wide gaps below)
    removed = np.cumsum(x[wide + 1].astype(np.float64) - x[wide])
    upper = x[wide + 1].astype(np.float64) - removed
    total = (hi - lo) - (removed[-1] if removed.size else 0.0)
    u = np.linspace(0.0, total, k) + lo
    seg = np.searchsorted(upper, u, side="right")  # how many wide gaps lie below u
    return u + np.concatenate(([0.0], removed))[seg]


@njit(cache=True)
def _count_distinct(x):
    n = 1 if x.size else 0
    for i in range(1, x.size):
        n += x[i] != x[i - 1]
    return n


@njit(cache=True)
def _wide_gaps(x, width):
    """Indices i with x[i+1] − x[i] > width (sorted x), without an N-sized temporary."""
    out = []
    for i in range(x.size - 1):
        if x[i + 1] - x[i] > width:
            out.append(i)
    return np.array(out, dtype=np.int64)


@njit(cache=True)
def _segment_sums(x, starts):
    """Sum (float64) and count of each run x[starts[j] : starts[j+1]] of the sorted data."""
    k = starts.size + 1
    sums = np.zeros(k)
    counts = np.zeros(k, dtype=np.int64)
    j = 0
    for i in range(x.size):
        while j < k - 1 and i >= starts[j]:
            j += 1
        sums[j] += x[i]
        counts[j] += 1
    return sums, counts


def _labels(flat: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid for each value (ties go to the upper one)."""
    size = centroids.size
    dtype = np.uint8 if size <= 256 else np.uint16 if size <= 65536 else np.uint32
    out = np.zeros(flat.size, dtype)
    if size > 1:
        bounds = _boundaries(centroids)
        step = 1 << 20  # in chunks: searchsorted returns 8 bytes per value
        for i in range(0, flat.size, step):
            out[i : i + step] = np.searchsorted(bounds, flat[i : i + step], side="right")
    return out
