"""Quantization-aware fine-tuning on DeepCABAC's uniform grid.

Post-training DeepCABAC moves every weight to a multiple of its tensor's step Δ and the
network never sees that error while it learns. :class:`GridTraining` lets it: inside the
context each chosen weight is re-parametrized as

    W = where(mask, V + sg(Δ·round(V/Δ) − V), 0)

(``sg`` = stop-gradient: the forward pass uses the grid value, the backward pass the
straight-through estimator ∂L/∂V = ∂L/∂W). ``mask`` is the non-zero pattern at entry, so
pruned weights stay exactly zero. Leaving the context writes W = where(mask, Δ·round(V/Δ), 0)
back as plain weights: every weight is then *exactly* a multiple of Δ, and DeepCABAC with that
step, λ = 0 and no dependent quantization codes it without any further error::

    steps = {n: method.step_for(n) for n in names}     # e.g. a DeepCabacMethod's QP + offsets
    with GridTraining(model, steps):
        train(model, ...)                               # the user's loop, optimizer built inside
    dnnzip.compress(model, "m.dnnz", method="deepcabac", qp=..., offsets=..., dq=False, lam=0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..codec import InvalidOption

__all__ = ["GridTraining", "on_grid"]


def on_grid(weight: torch.Tensor, step: float) -> torch.Tensor:
    """Δ·round(w/Δ) in the weight's dtype (ties to even, as ``np.rint`` in the coder)."""
    return torch.round(weight / step) * step


class _OnGrid(nn.Module):
    """Parametrization W = where(mask, V + sg(grid(V) − V), 0) (straight-through)."""

    def __init__(self, step: float, mask: torch.Tensor) -> None:
        super().__init__()
        self.step = float(step)
        self.register_buffer("mask", mask)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        w = v + (on_grid(v, self.step) - v).detach()
        return torch.where(self.mask, w, w.new_zeros(()))


class GridTraining:
    """Fine-tune ``model`` with its weights ``steps`` (name → Δ) held on their grids."""

    def __init__(self, model: nn.Module, steps: Mapping[str, float]) -> None:
        params = dict(model.named_parameters())
        missing = sorted(set(steps) - set(params))
        if missing:
            raise InvalidOption(f"not parameters of the model: {missing}")
        for name, step in steps.items():
            if not (isinstance(step, (int, float)) and math.isfinite(step) and step > 0):
                raise InvalidOption(f"step of {name!r} must be a positive number, got {step!r}")
            if not params[name].is_floating_point():
                raise InvalidOption(f"{name!r} is not a float parameter")
        self.model = model
        self.steps = {n: float(s) for n, s in steps.items()}
        self._active = False

    def _module(self, name: str) -> tuple[nn.Module, str]:
        mod_name, _, attr = name.rpartition(".")
        return self.model.get_submodule(mod_name), attr

    def start(self) -> GridTraining:
        """Register the grid parametrizations (the latent V starts at the current weight)."""
        if self._active:
            return self
        for name, step in self.steps.items():
            module, attr = self._module(name)
            mask = getattr(module, attr).detach() != 0
            parametrize.register_parametrization(module, attr, _OnGrid(step, mask))
        self._active = True
        return self

    def finalize(self) -> None:
        """Write the grid values back as plain weights (exact multiples of Δ, zeros kept)."""
        if not self._active:
            return
        for name, step in self.steps.items():
            module, attr = self._module(name)
            p = module.parametrizations[attr]
            mask = p[0].mask
            with torch.no_grad():
                final = torch.where(mask, on_grid(p.original.detach(), step),
                                    p.original.new_zeros(()))
            parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
            with torch.no_grad():
                getattr(module, attr).copy_(final)
        self._active = False

    def __enter__(self) -> GridTraining:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.finalize()
