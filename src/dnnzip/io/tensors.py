"""Conversions between torch tensors, numpy arrays and dtype names.

numpy has no bfloat16: such tensors travel as their raw uint16 bit patterns when kept
losslessly, and as float32 when they are coded lossily.
"""

from __future__ import annotations

import numpy as np
import torch

from ..codec import DnnzipError

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in TORCH_DTYPES.items()}
FLOAT_DTYPES = ("float64", "float32", "float16", "bfloat16")
# numpy dtype a tensor is stored as when kept losslessly
STORAGE_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(np.uint16 if name == "bfloat16" else name) for name in TORCH_DTYPES
}
ITEMSIZE = {name: STORAGE_DTYPES[name].itemsize for name in TORCH_DTYPES}


def dtype_name(tensor: torch.Tensor, where: str = "") -> str:
    """'float32', 'bfloat16', … or a clear error for dtypes dnnzip cannot store."""
    name = DTYPE_NAMES.get(tensor.dtype)
    if name is None:
        raise DnnzipError(f"{where}unsupported dtype {tensor.dtype}")
    return name


def storage_array(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's exact bits as a numpy array (bfloat16 → uint16 view), C-contiguous."""
    t = tensor.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def float32_array(tensor: torch.Tensor) -> np.ndarray:
    """The tensor as a float32 numpy array (what lossy codecs consume)."""
    t = tensor.detach().cpu()
    if t.dtype != torch.float32:
        t = t.to(torch.float32)
    return t.contiguous().numpy()


def numpy_to_torch(array: np.ndarray, dtype: str) -> torch.Tensor:
    """Rebuild a tensor of dtype ``dtype`` from a decoded array (storage bits or float32)."""
    array = np.require(array, requirements="C")  # keeps 0-d arrays 0-d, unlike ascontiguousarray
    if dtype == "bfloat16" and array.dtype == np.uint16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array).to(TORCH_DTYPES[dtype])


def storage_to_float32(array: np.ndarray, dtype: str) -> np.ndarray:
    """Float32 values of a decoded array (handles bfloat16 bit patterns)."""
    if dtype == "bfloat16" and array.dtype == np.uint16:
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array
