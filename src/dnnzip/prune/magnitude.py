"""Magnitude pruning (Deep Compression §2): drop the weights whose |w| is below a threshold.

Three ways to pick the threshold t:
  * ``quality``: t = quality · std(w), per layer (the paper's rule);
  * ``sparsity``: per layer, t is the s-quantile of |w| so that a fraction s becomes zero;
  * global: one threshold shared by several tensors, the s-quantile of all their |w|.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..codec import InvalidOption


def check_sparsity(sparsity: float) -> float:
    if not (0.0 <= float(sparsity) < 1.0):
        raise InvalidOption(f"sparsity must be in [0, 1), got {sparsity}")
    return float(sparsity)


def threshold_for_quality(weights: np.ndarray, quality: float) -> float:
    """t = quality · std(w)."""
    if not quality >= 0:
        raise InvalidOption(f"quality must be >= 0, got {quality}")
    return float(quality) * float(np.std(weights, dtype=np.float64))


def threshold_for_sparsity(weights: np.ndarray, sparsity: float) -> float:
    """The smallest t such that ``|w| < t`` removes at least ``sparsity`` of the weights."""
    sparsity = check_sparsity(sparsity)
    n = weights.size
    k = int(np.floor(sparsity * n))  # number of weights to remove
    if k == 0 or n == 0:
        return 0.0
    mags = np.abs(weights.reshape(-1))
    # the k-th smallest magnitude stays if it ties the next one: take the value just above
    kth = np.partition(mags, k - 1)[k - 1]
    return float(np.nextafter(np.float32(kth), np.float32(np.inf)))


def global_threshold(tensors: Iterable[np.ndarray], sparsity: float) -> float:
    """One threshold for all ``tensors`` so that ``sparsity`` of their weights go."""
    mags = [np.abs(np.asarray(t, dtype=np.float32).reshape(-1)) for t in tensors]
    if not mags:
        return 0.0
    return threshold_for_sparsity(np.concatenate(mags), sparsity)


def prune(weights: np.ndarray, threshold: float) -> np.ndarray:
    """A copy of ``weights`` with every |w| < threshold set to 0."""
    out = np.array(weights, dtype=np.float32, copy=True)
    out[np.abs(out) < threshold] = 0.0
    return out
