"""Pruning: magnitude thresholds per layer or global."""

from .magnitude import (
    check_sparsity,
    global_threshold,
    prune,
    threshold_for_quality,
    threshold_for_sparsity,
)

__all__ = [
    "check_sparsity",
    "global_threshold",
    "prune",
    "threshold_for_quality",
    "threshold_for_sparsity",
]
