"""Uniform scalar quantization on the grid {q·Δ}: q = round(w / Δ), reconstruction q·Δ."""

from __future__ import annotations

import numpy as np

from ..codec import InvalidOption


def step_for_bits(weights: np.ndarray, bits: int) -> float:
    """Δ so that the levels of ``weights`` span 2^bits − 1 values symmetric around 0."""
    if bits < 1:
        raise InvalidOption(f"bits must be >= 1, got {bits}")
    peak = float(np.max(np.abs(weights))) if weights.size else 0.0
    if peak == 0.0:
        return 1.0
    half = max((1 << (bits - 1)) - 1, 1)
    return peak / half


def quantize(weights: np.ndarray, step: float) -> np.ndarray:
    """Integer levels q = round(w / Δ) (int32)."""
    if not (np.isfinite(step) and step > 0):
        raise InvalidOption(f"quantization step must be a positive number, got {step}")
    return np.rint(np.asarray(weights, dtype=np.float32) / np.float32(step)).astype(np.int32)


def dequantize(levels: np.ndarray, step: float) -> np.ndarray:
    return (levels.astype(np.float32) * np.float32(step)).astype(np.float32)
