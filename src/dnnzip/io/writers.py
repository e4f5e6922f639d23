"""Write restored models: safetensors (streamed, one tensor in memory at a time) or .pt.

The safetensors layout is simple enough to stream: u64 header length N, N bytes of JSON
({name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}, padded
with spaces to a multiple of 8), then the raw little-endian tensor bytes in that order.
Every size is known from the .dnnz index before any tensor is decoded, so the header can
be written first; ``safetensors.safe_open`` reads the result (tested).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable

import numpy as np
import torch

from ..container.dnnz import AtomicFile
from .tensors import ITEMSIZE

SAFETENSORS_CODES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
}  # fmt: skip


def write_safetensors(
    path: str | os.PathLike,
    specs: Iterable[tuple[str, tuple[int, ...], str]],
    produce: Callable[[str], np.ndarray],
    metadata: dict[str, str] | None = None,
    force: bool = False,
    on_tensor: Callable[[str], None] | None = None,
) -> None:
    """Write a safetensors file from (name, shape, dtype) specs; ``produce(name)`` returns the
    tensor's storage array (exact bits, bfloat16 as uint16) when its turn comes."""
    specs = list(specs)
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, shape, dtype in specs:
        nbytes = int(np.prod(shape, dtype=np.int64)) * ITEMSIZE[dtype]
        header[name] = {
            "dtype": SAFETENSORS_CODES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with AtomicFile(path, force) as out:
        out.file.write(struct.pack("<Q", len(blob)))
        out.file.write(blob)
        for name, shape, dtype in specs:
            arr = np.ascontiguousarray(produce(name))
            expected = int(np.prod(shape, dtype=np.int64)) * ITEMSIZE[dtype]
            if arr.nbytes != expected:
                raise ValueError(
                    f"tensor {name!r}: produced {arr.nbytes} bytes, expected {expected}"
                )
            out.file.write(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
            if on_tensor is not None:
                on_tensor(name)


def write_torch(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], force: bool = False
) -> None:
    """Write a state_dict with ``torch.save`` through a temporary file."""
    with AtomicFile(path, force) as out:
        torch.save(tensors, out.file)
