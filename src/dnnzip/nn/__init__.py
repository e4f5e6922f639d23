"""PyTorch integration: fine-tuning after pruning and weight sharing, modules that compute
from CER/CSER weights, model conversion, and per-weight importance (Fisher) estimation."""

from .convert import LayerChoice, choose_format, convert_model, pick_format, save_converted
from .finetune import (
    Pruner,
    WeightSharing,
    distillation_loss,
    iter_codebook_parameters,
    iterative_prune,
    model_sparsity,
    prunable_parameters,
)
from .grid import GridTraining, on_grid
from .importance import fisher_diagonal, load_importance, output_sensitivity, save_importance
from .lenet import LeNet5, LeNet300100
from .modules import CSERConv2d, CSERLinear

__all__ = [
    "CSERConv2d",
    "CSERLinear",
    "GridTraining",
    "LayerChoice",
    "LeNet300100",
    "LeNet5",
    "Pruner",
    "WeightSharing",
    "choose_format",
    "convert_model",
    "distillation_loss",
    "fisher_diagonal",
    "iter_codebook_parameters",
    "iterative_prune",
    "load_importance",
    "model_sparsity",
    "on_grid",
    "output_sensitivity",
    "pick_format",
    "prunable_parameters",
    "save_converted",
    "save_importance",
]
