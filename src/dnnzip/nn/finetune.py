"""Fine-tuning a compressed network inside the user's own training loop (Deep Compression §3.3).

Two objects, each usable as a context manager around any training loop:

* :class:`Pruner` — magnitude pruning with kept masks. ``prune()`` sets the masks (per layer
  t = quality · std of the surviving weights, or the threshold that reaches a target sparsity
  per layer, or one global threshold); while the pruner is *attached* (``with pruner:``),
  the gradient of every pruned weight is multiplied by its mask and, after every
  ``optimizer.step()`` of any optimizer that holds the weight, the weight and its optimizer
  state (momentum, Adam moments) are multiplied by the mask again. Masking the state as
  well as the gradient is what keeps pruned weights at exactly zero under momentum and
  weight decay: a momentum buffer filled before pruning would otherwise move them.
* :class:`WeightSharing` — per-layer 1-D k-means with linear initialisation over
  [min, max] of the non-zero weights (:func:`dnnzip.quant.kmeans.kmeans_1d`), then the
  layer's weight is re-parametrized as ``W = where(mask, codebook[index], 0)``. The codebook
  (≤ 2^bits shared values) becomes the trainable parameter, so autograd gives each shared
  value the *sum* of the gradients of the weights that use it, ∂L/∂c_k = Σ_{i: idx_i = k}
  ∂L/∂W_i, exactly the paper's centroid update. Leaving the context writes
  ``codebook[index]`` back into a plain weight that takes ≤ 2^bits distinct non-zero values.

:func:`iterative_prune` runs the prune → retrain schedule with the user's ``train_fn``;
:func:`distillation_loss` lets that retraining (and the centroid fine-tuning) learn from the
dense model's soft labels as well as the hard ones.

Biases and normalization parameters are left alone by default: the default selection is
every parameter with ≥ 2 dimensions that does not belong to a normalization layer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.optim.optimizer import register_optimizer_step_post_hook

from ..codec import InvalidOption
from ..prune.magnitude import check_sparsity, threshold_for_quality, threshold_for_sparsity
from ..quant.kmeans import kmeans_1d

__all__ = [
    "Pruner",
    "WeightSharing",
    "iterative_prune",
    "iter_codebook_parameters",
    "prunable_parameters",
    "model_sparsity",
    "distillation_loss",
]

_NORM_TYPES = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
)

Scope = Literal["layer", "global"]
PerLayer = float | Mapping[str, float]


def prunable_parameters(model: nn.Module) -> list[str]:
    """Names of the parameters compressed by default: ≥ 2-D tensors outside norm layers.

    That is the weights of Linear / Conv / Embedding layers; biases (1-D) and the affine
    parameters of BatchNorm / LayerNorm / GroupNorm are excluded, as Deep Compression does.
    """
    names = []
    for mod_name, module in model.named_modules():
        if isinstance(module, _NORM_TYPES):
            continue
        for p_name, p in module.named_parameters(recurse=False):
            if p.dim() >= 2:
                names.append(f"{mod_name}.{p_name}" if mod_name else p_name)
    return names


def model_sparsity(model: nn.Module, names: Iterable[str] | None = None) -> dict[str, float]:
    """Fraction of exact zeros per selected parameter, plus ``"total"`` over all of them."""
    names = list(prunable_parameters(model) if names is None else names)
    out: dict[str, float] = {}
    zeros = total = 0
    for name in names:
        w = _get_tensor(model, name).detach()
        z = int((w == 0).sum())
        out[name] = z / max(w.numel(), 1)
        zeros += z
        total += w.numel()
    out["total"] = zeros / max(total, 1)
    return out


def _get_tensor(model: nn.Module, name: str) -> torch.Tensor:
    """The (possibly parametrized) tensor ``name`` of ``model``."""
    mod_name, _, attr = name.rpartition(".")
    return getattr(model.get_submodule(mod_name), attr)


def _per_layer(value: PerLayer | None, names: Sequence[str], what: str) -> dict[str, float]:
    """Expand a scalar or a {name: value} mapping into a value per layer (missing = skip)."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise InvalidOption(f"{what} given for unknown or excluded parameters: {unknown}")
        return {n: float(v) for n, v in value.items()}
    return {n: float(value) for n in names}


class Pruner:
    """Magnitude pruning of a model's weights with masks kept through retraining.

    Typical use, with any training loop::

        pruner = Pruner(model)
        pruner.prune(sparsity=0.9)            # or quality=1.0, or {"fc1.weight": 0.95, ...}
        with pruner:                          # masks enforced while training
            train(model)

    The masks live in ``pruner.masks`` (bool tensors, True = kept). Parameters are looked up
    by name each time, so the pruner survives a module replacing its Parameter object.
    """

    def __init__(self, model: nn.Module, names: Iterable[str] | None = None) -> None:
        self.model = model
        self.names: list[str] = list(prunable_parameters(model) if names is None else names)
        params = dict(model.named_parameters())
        missing = [n for n in self.names if n not in params]
        if missing:
            raise InvalidOption(f"not parameters of the model: {missing}")
        self.masks: dict[str, torch.Tensor] = {
            n: torch.ones_like(params[n], dtype=torch.bool) for n in self.names
        }
        self.history: list[dict[str, Any]] = []
        self._handles: list[Any] = []

    # -- choosing masks ---------------------------------------------------------------
    def prune(
        self,
        sparsity: PerLayer | None = None,
        *,
        quality: PerLayer | None = None,
        scope: Scope = "layer",
    ) -> dict[str, float]:
        """Extend the masks and zero the newly pruned weights; returns sparsity per layer.

        ``sparsity`` (fraction of each tensor that is zero afterwards, counting weights
        pruned before) or ``quality`` (remove |w| < quality · std of the surviving weights),
        a scalar for every layer or a {parameter name: value} dict (layers not in it are left
        as they are). ``scope="global"`` uses one threshold for all layers: the magnitude that
        leaves ``sparsity`` of all selected weights zero, or quality · std of all survivors.
        A weight once pruned stays pruned.
        """
        if (sparsity is None) == (quality is None):
            raise InvalidOption("give exactly one of sparsity= or quality=")
        if scope not in ("layer", "global"):
            raise InvalidOption(f"scope must be 'layer' or 'global', got {scope!r}")
        with torch.no_grad():
            weights = {n: self._param(n).detach() * self.masks[n] for n in self.names}
            if scope == "global":
                if isinstance(sparsity, Mapping) or isinstance(quality, Mapping):
                    raise InvalidOption("scope='global' takes one scalar sparsity or quality")
                if sparsity is not None:
                    flat = (
                        torch.cat([w.reshape(-1) for w in weights.values()]).float().cpu().numpy()
                    )
                    t = threshold_for_sparsity(flat, check_sparsity(float(sparsity)))
                else:
                    alive = torch.cat([weights[n][self.masks[n]] for n in self.names])
                    t = threshold_for_quality(alive.float().cpu().numpy(), float(quality))
                thresholds = {n: t for n in self.names}
            else:
                thresholds = {}
                for n, s in _per_layer(sparsity, self.names, "sparsity").items():
                    thresholds[n] = threshold_for_sparsity(
                        weights[n].float().cpu().numpy(), check_sparsity(s)
                    )
                for n, q in _per_layer(quality, self.names, "quality").items():
                    alive = weights[n][self.masks[n]].float().cpu().numpy()
                    thresholds[n] = threshold_for_quality(alive, q) if alive.size else 0.0
            for n, t in thresholds.items():
                self.masks[n] &= weights[n].abs() >= t
        self.apply()
        return self.sparsity()

    def sparsity(self) -> dict[str, float]:
        """Pruned fraction per layer (from the masks) and ``"total"``."""
        out = {n: 1.0 - int(m.sum()) / max(m.numel(), 1) for n, m in self.masks.items()}
        pruned = sum(int((~m).sum()) for m in self.masks.values())
        out["total"] = pruned / max(sum(m.numel() for m in self.masks.values()), 1)
        return out

    # -- enforcing masks --------------------------------------------------------------
    def _param(self, name: str) -> nn.Parameter:
        return self.model.get_parameter(name)

    def apply(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Zero the pruned weights (and their entries in ``optimizer``'s state, if given)."""
        with torch.no_grad():
            for n in self.names:
                p = self._param(n)
                p.mul_(self.masks[n].to(p.dtype))
                if optimizer is not None:
                    _mask_state(optimizer, p, self.masks[n])

    def attach(self) -> Pruner:
        """Enforce the masks until :meth:`detach`: masked gradients, re-masking after steps."""
        if self._handles:
            return self
        for n in self.names:
            p = self._param(n)
            self._handles.append(p.register_hook(self._grad_hook(n)))
        self._handles.append(register_optimizer_step_post_hook(self._after_step))
        self.apply()
        return self

    def detach(self) -> None:
        """Remove the hooks (the weights keep their zeros)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def _grad_hook(self, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def hook(grad: torch.Tensor) -> torch.Tensor:
            return grad * self.masks[name].to(grad.dtype)

        return hook

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """Re-mask every pruned weight this optimizer holds, and its state, after ``step``."""
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for n in self.names:
                p = params.get(n)  # absent while e.g. WeightSharing re-parametrizes it
                if p is not None and id(p) in held:
                    p.mul_(self.masks[n].to(p.dtype))
                    _mask_state(optimizer, p, self.masks[n])

    def __enter__(self) -> Pruner:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()
        self.apply()


def _mask_state(optimizer: torch.optim.Optimizer, p: torch.Tensor, mask: torch.Tensor) -> None:
    """Zero the pruned entries of every per-weight buffer (momentum, Adam moments) of ``p``."""
    for value in optimizer.state.get(p, {}).values():
        if isinstance(value, torch.Tensor) and value.shape == p.shape:
            value.mul_(mask.to(value.dtype))


def iterative_prune(
    model: nn.Module,
    train_fn: Callable[[nn.Module], Any],
    schedule: Sequence[PerLayer],
    *,
    scope: Scope = "layer",
    pruner: Pruner | None = None,
    eval_fn: Callable[[nn.Module], float] | None = None,
) -> Pruner:
    """Prune to each sparsity of ``schedule`` in turn, retraining with ``train_fn`` after each.

    ``schedule`` holds increasing sparsities, each a scalar or a {parameter: sparsity} dict,
    e.g. ``[0.5, 0.75, 0.9]``: gradual pruning lets the surviving weights compensate, which
    one-shot pruning to the final sparsity cannot. ``train_fn(model)`` is the user's loop
    (it may build its own optimizer); the masks are enforced while it runs. ``eval_fn``, if
    given, is called after each retraining and recorded in ``pruner.history``.
    """
    pruner = pruner if pruner is not None else Pruner(model)
    for target in schedule:
        achieved = pruner.prune(target, scope=scope)
        with pruner:
            train_fn(model)
        record: dict[str, Any] = {"target": target, "sparsity": achieved}
        if eval_fn is not None:
            record["metric"] = float(eval_fn(model))
        pruner.history.append(record)
    return pruner


class _SharedWeight(nn.Module):
    """Parametrization W = where(mask, codebook[index], 0) with the codebook as parameter.

    ``right_inverse`` maps a dense W to the least-squares codebook for the fixed assignment
    (the mean of each cluster's weights), so registering it on the k-means assignment
    starts from the k-means centroids, and assigning a new weight re-fits the codebook.
    """

    def __init__(self, index: torch.Tensor, mask: torch.Tensor, centroids: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("index", index)
        self.register_buffer("mask", mask)
        self.register_buffer("initial", centroids)

    def forward(self, codebook: torch.Tensor) -> torch.Tensor:
        return torch.where(self.mask, codebook[self.index], codebook.new_zeros(()))

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        k = self.initial.numel()
        idx = self.index[self.mask]
        sums = torch.zeros(k, dtype=torch.float64, device=weight.device)
        sums.index_add_(0, idx, weight.detach()[self.mask].to(torch.float64))
        counts = torch.bincount(idx, minlength=k)
        means = sums / counts.clamp(min=1)
        return torch.where(counts > 0, means, self.initial.to(torch.float64)).to(weight.dtype)


class WeightSharing:
    """Per-layer k-means weight sharing with trainable shared values (centroid fine-tuning).

    ::

        with WeightSharing(model, fc_bits=5, conv_bits=8) as ws:
            opt = torch.optim.SGD(model.parameters(), lr=...)   # build it *inside*: the
            train(model, opt)                                   # codebooks are new parameters
        # here every shared weight takes <= 2**bits distinct non-zero values

    ``bits`` (an int for every layer or a {parameter name: bits} dict) overrides the defaults
    ``conv_bits`` for ≥ 3-D weights and ``fc_bits`` for 2-D ones (the paper's 8 and 5). Zero
    weights (pruned, e.g. by :class:`Pruner`) form the mask: they are not clustered, get no
    gradient and stay exactly zero. While active, ``model.named_parameters()`` shows each
    codebook as ``<module>.parametrizations.<name>.original``; the user's optimizer updates
    it with ∂L/∂c_k = Σ_{i in cluster k} ∂L/∂W_i, so learning rates should be smaller than
    for the dense weights (or use a scale-free optimizer such as Adam).
    """

    def __init__(
        self,
        model: nn.Module,
        bits: int | Mapping[str, int] | None = None,
        *,
        fc_bits: int = 5,
        conv_bits: int = 8,
        names: Iterable[str] | None = None,
        iters: int = 50,
    ) -> None:
        self.model = model
        self.names: list[str] = list(prunable_parameters(model) if names is None else names)
        params = dict(model.named_parameters())
        missing = [n for n in self.names if n not in params]
        if missing:
            raise InvalidOption(f"not parameters of the model: {missing}")
        if isinstance(bits, Mapping):
            unknown = sorted(set(bits) - set(self.names))
            if unknown:
                raise InvalidOption(f"bits given for unknown or excluded parameters: {unknown}")
        self.bits: dict[str, int] = {}
        for n in self.names:
            if isinstance(bits, Mapping):
                b = bits.get(n, conv_bits if params[n].dim() >= 3 else fc_bits)
            elif bits is not None:
                b = bits
            else:
                b = conv_bits if params[n].dim() >= 3 else fc_bits
            if not 1 <= int(b) <= 16:
                raise InvalidOption(f"bits for {n} must be in 1..16, got {b}")
            self.bits[n] = int(b)
        self.iters = iters
        self._active = False

    def share(self) -> WeightSharing:
        """Cluster each layer's non-zero weights and make the codebooks the parameters."""
        if self._active:
            return self
        for n in self.names:
            mod_name, _, attr = n.rpartition(".")
            module = self.model.get_submodule(mod_name)
            w = getattr(module, attr).detach()
            mask = w != 0
            values = w[mask].float().cpu().numpy().astype(np.float32)
            centroids, labels = kmeans_1d(values, 2 ** self.bits[n], self.iters)
            if centroids.size == 0:  # an all-zero tensor: one dummy centroid, never used
                centroids = np.zeros(1, np.float32)
            index = torch.zeros(w.shape, dtype=torch.long, device=w.device)
            index[mask] = torch.from_numpy(labels.astype(np.int64)).to(w.device)
            cb = torch.from_numpy(centroids).to(device=w.device, dtype=w.dtype)
            parametrize.register_parametrization(module, attr, _SharedWeight(index, mask, cb))
            # start exactly from the k-means centroids (right_inverse gives cluster means);
            # torch reuses the weight's Parameter object for the codebook, so drop its stale
            # dense-shaped gradient
            book = module.parametrizations[attr].original
            with torch.no_grad():
                book.copy_(cb)
            book.grad = None
        self._active = True
        return self

    def _parametrization(self, name: str) -> tuple[nn.Module, str]:
        mod_name, _, attr = name.rpartition(".")
        return self.model.get_submodule(mod_name), attr

    @property
    def codebooks(self) -> dict[str, nn.Parameter]:
        """The live, trainable shared values of each layer (while sharing is active)."""
        out = {}
        for n in self.names:
            module, attr = self._parametrization(n)
            out[n] = module.parametrizations[attr].original
        return out

    @property
    def indices(self) -> dict[str, torch.Tensor]:
        """Cluster index of every weight (0 where pruned; see :attr:`masks`)."""
        out = {}
        for n in self.names:
            module, attr = self._parametrization(n)
            out[n] = module.parametrizations[attr][0].index
        return out

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """True where a weight is kept (non-zero before sharing)."""
        out = {}
        for n in self.names:
            module, attr = self._parametrization(n)
            out[n] = module.parametrizations[attr][0].mask
        return out

    def finalize(self) -> dict[str, torch.Tensor]:
        """Write ``codebook[index]`` back as plain weights; returns the final codebooks."""
        if not self._active:
            return {}
        books = {n: c.detach().clone() for n, c in self.codebooks.items()}
        for n in self.names:
            module, attr = self._parametrization(n)
            parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
        self._active = False
        return books

    def __enter__(self) -> WeightSharing:
        return self.share()

    def __exit__(self, *exc: object) -> None:
        self.finalize()


def iter_codebook_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """The shared-value parameters of every layer under :class:`WeightSharing`."""
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for name, plist in module.parametrizations.items():
                if isinstance(plist[0], _SharedWeight):
                    yield module.parametrizations[name].original


def distillation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    teacher_logits: torch.Tensor,
    alpha: float = 0.5,
    temperature: float = 4.0,
) -> torch.Tensor:
    """(1 − α)·CE(z, y) + α·T²·KL(softmax(z_t/T) ‖ softmax(z/T)) (Hinton et al., 2015).

    Used while retraining a pruned or shared net with the uncompressed one as teacher: the
    soft labels carry the teacher's whole output distribution (which wrong classes are close),
    so the compressed net is pulled back towards the function it approximates rather than
    only towards the labels. T² keeps the soft term's gradient scale independent of T.
    """
    if not 0.0 <= alpha <= 1.0:
        raise InvalidOption(f"alpha must be in [0, 1], got {alpha}")
    if not temperature > 0:
        raise InvalidOption(f"temperature must be > 0, got {temperature}")
    hard = nn.functional.cross_entropy(logits, target)
    if alpha == 0.0:
        return hard
    soft = nn.functional.kl_div(
        nn.functional.log_softmax(logits / temperature, dim=1),
        nn.functional.log_softmax(teacher_logits.detach() / temperature, dim=1),
        log_target=True,
        reduction="batchmean",
    )
    return (1.0 - alpha) * hard + alpha * temperature**2 * soft
