"""``convert_model``: swap the quantized Linear/Conv2d layers of a model for CER/CSER layers.

A layer is *quantized* when its weight holds at most ``max_distinct`` distinct values (a
pruned + quantized layer has a handful; a float layer has about one per weight, and CER/CSER
would only cost more there). With ``format="auto"`` each quantized layer gets the format the
time model of ``dnnzip.formats.cost`` predicts fastest at the expected batch — dense included,
so a layer that is not sparse enough keeps its ``nn.Linear``/``nn.Conv2d``; where the runner-up
is predicted within ``SETTLE_FACTOR`` of the best, the two are timed on the layer itself.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..codec import InvalidOption
from ..formats import CER, CSER, CSR, MatrixFormat, Triplets
from ..formats._base import SPLIT_TUNE_BLOCK, SPLIT_TUNE_ROUNDS, median_times
from ..formats.cost import TimeModel, _TorchDense, default_time_model, stream_bytes
from .modules import CSERConv2d, CSERLinear

FORMATS = ("cser", "cer", "csr", "auto")
_BUILD = {"cser": CSER, "cer": CER, "csr": CSR}
#: a runner-up predicted within this factor of the best is timed against it on the layer
#: (``pick_format``): the model carries the rates of its calibration matrices, and on the
#: 30 522 × 384 embedding at batch 8 it predicted CSR and CSER within 2% where CSR measured
#: 1.57× slower (AMD EPYC, benchmarks/formats.py)
SETTLE_FACTOR = 1.5


@dataclass(frozen=True)
class LayerChoice:
    """What ``convert_model`` did with one layer and why."""

    name: str
    kind: str
    shape: tuple[int, int]
    distinct: int
    format: str  # "dense" when kept
    predicted_s: dict[str, float]
    reason: str
    #: median seconds of the two formats timed on the layer (empty: the model decided)
    measured_s: dict[str, float] = field(default_factory=dict)


def _weight_matrix(module: nn.Module) -> np.ndarray:
    return module.weight.detach().cpu().reshape(module.weight.shape[0], -1).numpy()


def _convertible(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return (isinstance(module, nn.Conv2d) and module.groups == 1
            and module.padding_mode == "zeros" and not isinstance(module.padding, str))


def _batch_of(module: nn.Module, batch: int, conv_positions: int) -> int:
    return batch * conv_positions if isinstance(module, nn.Conv2d) else batch


def choose_format(t: Triplets, batch: int = 1, model: TimeModel | None = None
                  ) -> tuple[str, dict[str, float]]:
    """The fastest of dense/CSR/CSER for this matrix at this batch, by the time model."""
    model = model or default_time_model()
    m, n = t.shape
    nonzero = t.nnz if t.omega[0] == 0 else int(np.count_nonzero(t.omega[t.labels()]))
    pred = {
        "dense": model.predict("dense", t.shape, m * n, batch, stream_bytes("dense", t.shape, 0)),
        "csr": model.predict("csr", t.shape, nonzero, batch,
                             stream_bytes("csr", t.shape, nonzero)),
        "cser": model.predict("cser", t.shape, t.nnz, batch,
                              stream_bytes("cser", t.shape, t.nnz, t.num_groups,
                                           t.omega.shape[0])),
    }
    return min(pred, key=pred.get), pred


def pick_format(t: Triplets, batch: int = 1, model: TimeModel | None = None,
                settle: float | None = SETTLE_FACTOR
                ) -> tuple[str, dict[str, float], dict[str, float]]:
    """``choose_format``, and where the runner-up is predicted within ``settle`` times the
    best (None: never), both built and timed on this matrix — one thread like the model,
    medians of alternating blocks (``median_times``) — and the faster kept.

    Returns (format, predicted seconds, measured seconds: empty when the model decided)."""
    return _pick(t, batch, model, settle)[:3]


def _check_settle(settle: float | None) -> None:
    if settle is not None and not (math.isfinite(settle) and settle >= 1.0):
        raise InvalidOption(f"settle must be a finite factor >= 1 (or None), got {settle!r}")


def _pick(t: Triplets, batch: int, model: TimeModel | None = None,
          settle: float | None = SETTLE_FACTOR
          ) -> tuple[str, dict[str, float], dict[str, float], dict[str, Any]]:
    """``pick_format`` plus the matrices it built to time (``convert_model`` keeps the
    chosen one instead of building it again)."""
    _check_settle(settle)
    fmt, pred = choose_format(t, batch, model)
    first, second = sorted(pred, key=pred.get)[:2]
    if settle is None or pred[second] > settle * pred[first]:
        return fmt, pred, {}, {}
    mats = {k: _TorchDense(t.toarray()) if k == "dense" else _BUILD[k].from_triplets(t)
            for k in (first, second)}
    rng = np.random.default_rng(0)
    n = t.shape[1]
    x = rng.standard_normal((n, batch) if batch > 1 else n).astype(np.float32)
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times, _ = median_times((lambda: mats[first].dot(x, threads=1),
                                 lambda: mats[second].dot(x, threads=1)),
                                SPLIT_TUNE_ROUNDS, SPLIT_TUNE_BLOCK)
    finally:
        torch.set_num_threads(torch_threads)
    measured = {first: times[0], second: times[1]}
    return min(measured, key=measured.get), pred, measured, mats


def convert_model(model: nn.Module, format: str = "cser", *, max_distinct: int = 256,
                  batch: int = 1, conv_positions: int = 64, threads: int | None = None,
                  inplace: bool = False, time_model: TimeModel | None = None,
                  report: list[LayerChoice] | None = None,
                  settle: float | None = SETTLE_FACTOR) -> nn.Module:
    """Return ``model`` with its quantized Linear / Conv2d (groups=1) layers computing from
    ``format`` ("cser", "cer", "csr" or "auto"); everything else is kept as is.

    batch: rows per call expected at inference (tokens × sentences for a transformer), used by
    "auto"; conv layers multiply it by ``conv_positions`` (output pixels per image).
    report: if a list is given, one ``LayerChoice`` per candidate layer is appended to it.
    settle: with "auto", a runner-up predicted within this factor of the best is timed
    against it on the layer (``pick_format``); None: the time model alone decides.
    """
    key = str(format).lower()
    if key not in FORMATS:
        raise InvalidOption(f"unknown format {format!r} (choose from {', '.join(FORMATS)})")
    if max_distinct < 1:
        raise InvalidOption(f"max_distinct must be >= 1, got {max_distinct}")
    _check_settle(settle)
    out = model if inplace else copy.deepcopy(model)
    swaps: list[tuple[str, nn.Module]] = []
    for name, module in out.named_modules():
        if not _convertible(module):
            continue
        w = _weight_matrix(module)
        kind = type(module).__name__
        distinct = int(np.unique(w).shape[0]) if w.size else 0
        if distinct > max_distinct or w.size == 0:
            if report is not None:
                report.append(LayerChoice(name, kind, w.shape, distinct, "dense", {},
                                          f"{distinct} distinct values > {max_distinct}"))
            continue
        t = Triplets.from_dense(w)
        measured: dict[str, float] = {}
        built: dict[str, Any] = {}
        if key == "auto":
            b = _batch_of(module, batch, conv_positions)
            fmt, pred, measured, built = _pick(t, b, time_model, settle)
            reason = (f"measured fastest at batch {b} (predicted within {settle}x)" if measured
                      else f"fastest predicted at batch {b}")
        else:
            fmt, pred, reason = key, {}, "requested"
        if report is not None:
            report.append(LayerChoice(name, kind, w.shape, distinct, fmt, pred, reason,
                                      measured))
        if fmt == "dense":
            continue
        matrix: MatrixFormat = built[fmt] if fmt in built else _BUILD[fmt].from_triplets(t)
        if isinstance(module, nn.Linear):
            new = CSERLinear(matrix, module.bias, threads)
        else:
            new = CSERConv2d(matrix, module.in_channels, module.kernel_size, module.bias,
                             module.stride, module.padding, module.dilation, threads)
        swaps.append((name, new))
    for name, new in swaps:
        if not name:  # the model itself is the layer
            return new
        parent_name, _, child = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        setattr(parent, child, new)
    return out


def save_converted(model: nn.Module, path: str) -> None:
    """Save a converted model with ``torch.save`` (the matrices pickle with their arrays)."""
    torch.save(model, path)
