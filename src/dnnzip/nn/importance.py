"""Per-weight importance F_i for rate–distortion quantization: the diagonal of the Fisher
information (or of the Gauss–Newton matrix of the model's outputs), estimated from a few
batches of data.

Why: to second order, the loss increase caused by weight errors δ is ½·Σ_i F_i·δ_i² when F is
the (diagonal) curvature, so RDOQ minimising Σ_i F_i·(w_i − ŵ_i)² + λ·R spends bits where an
error hurts and saves them where it does not.

* ``fisher_diagonal``: F_i = mean over batches of (∂L/∂θ_i)², the empirical Fisher of a loss
  (e.g. cross-entropy with the labels, or with labels sampled from the model).
* ``output_sensitivity``: when there is no loss (an embedding model), the Gauss–Newton
  diagonal of the outputs, F_i = Σ_k (∂f_k/∂θ_i)² per sample, estimated without forming the
  Jacobian: for Rademacher probes r, E[(∂(r·f)/∂θ_i)²] = Σ_k (∂f_k/∂θ_i)². With f normalised
  to unit length, ½·Σ_i F_i·δ_i² predicts the mean 1 − cos(f, f̂).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

from ..codec import InvalidOption


def _params(model: torch.nn.Module, names: Iterable[str] | None) -> dict[str, torch.nn.Parameter]:
    params = dict(model.named_parameters())
    if names is None:
        return {n: p for n, p in params.items() if p.requires_grad}
    missing = [n for n in names if n not in params]
    if missing:
        raise InvalidOption(f"model has no parameter(s) {', '.join(missing[:5])}")
    return {n: params[n] for n in names}


def fisher_diagonal(model: torch.nn.Module, loss_fn: Callable[[torch.nn.Module, object],
                                                                torch.Tensor],
                    batches: Iterable[object], names: Iterable[str] | None = None
                    ) -> dict[str, np.ndarray]:
    """Mean squared gradient of ``loss_fn(model, batch)`` per parameter (float32 arrays)."""
    params = _params(model, names)
    acc = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    count = 0
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            model.zero_grad(set_to_none=True)
            loss = loss_fn(model, batch)
            if not torch.is_tensor(loss) or loss.dim() != 0:
                raise InvalidOption("loss_fn must return a scalar tensor")
            if not torch.isfinite(loss):
                raise InvalidOption("loss_fn returned a non-finite loss")
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for (n, _), gr in zip(params.items(), grads, strict=True):
                if gr is not None:
                    acc[n] += gr.detach().double() ** 2
            count += 1
    finally:
        model.train(was_training)
    if count == 0:
        raise InvalidOption("no batches given for the Fisher estimate")
    return {n: (a / count).float().cpu().numpy() for n, a in acc.items()}


def output_sensitivity(model: torch.nn.Module,
                       forward: Callable[[torch.nn.Module, object], torch.Tensor],
                       batches: Iterable[object], probes: int = 4, seed: int = 0,
                       names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Gauss–Newton diagonal of ``forward(model, batch)`` (shape [batch, ...]) per sample:
    F_i = (1/N)·Σ_samples Σ_k (∂f_k/∂θ_i)², from ``probes`` random ±1 projections a batch."""
    if probes < 1:
        raise InvalidOption(f"probes must be >= 1, got {probes}")
    params = _params(model, names)
    acc = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    gen = torch.Generator().manual_seed(seed)
    samples = 0
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            out = forward(model, batch)
            samples += out.shape[0]
            for j in range(probes):
                r = torch.randint(0, 2, out.shape, generator=gen).to(out.dtype) * 2 - 1
                grads = torch.autograd.grad((out * r).sum(), list(params.values()),
                                            retain_graph=j < probes - 1, allow_unused=True)
                for (n, _), gr in zip(params.items(), grads, strict=True):
                    if gr is not None:
                        acc[n] += gr.detach().double() ** 2
    finally:
        model.train(was_training)
    if samples == 0:
        raise InvalidOption("no samples given for the sensitivity estimate")
    return {n: (a / (probes * samples)).float().cpu().numpy() for n, a in acc.items()}


def save_importance(path: str | Path, importance: Mapping[str, np.ndarray]) -> None:
    """Write name → importance array as a safetensors file (what a calibration script hands
    to ``dnnzip compress --importance FILE``)."""
    from safetensors.numpy import save_file

    arrays = {}
    for name, a in importance.items():
        a = np.ascontiguousarray(a, dtype=np.float32)
        if not np.isfinite(a).all() or (a < 0).any():
            raise InvalidOption(f"importance of {name!r} must be finite and non-negative")
        arrays[name] = a
    save_file(arrays, str(path))


def load_importance(path: str | Path) -> dict[str, np.ndarray]:
    """Read an importance file (safetensors, or .npz) back to name → float32 array."""
    from ..codec import DnnzipError

    p = Path(path)
    if not p.is_file():
        raise DnnzipError(f"{p}: importance file not found")
    try:
        if p.suffix == ".npz":
            with np.load(p) as z:
                out = {k: z[k].astype(np.float32) for k in z.files}
        else:
            from safetensors.numpy import load_file

            out = {k: v.astype(np.float32) for k, v in load_file(str(p)).items()}
    except DnnzipError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file
        raise DnnzipError(f"{p}: not a readable importance file ({exc})") from None
    for name, a in out.items():
        if not np.isfinite(a).all() or (a < 0).any():
            raise DnnzipError(f"{p}: importance of {name!r} has negative or non-finite values")
    return out
