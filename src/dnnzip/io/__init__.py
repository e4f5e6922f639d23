"""Model I/O: read tensors one at a time from safetensors / .pt / HF folders, write them back."""

from .readers import DictSource, ModelReadError, SafetensorsSource, TensorSource, open_model
from .writers import write_safetensors, write_torch

__all__ = [
    "DictSource",
    "ModelReadError",
    "SafetensorsSource",
    "TensorSource",
    "open_model",
    "write_safetensors",
    "write_torch",
]
