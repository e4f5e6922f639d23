"""Lossless passthrough: the tensor's exact bytes (for biases, norms, integer buffers, …)."""

from __future__ import annotations

import numpy as np

from ..codec import Codec, CorruptPayload, register
from ..io.tensors import STORAGE_DTYPES


@register
class RawCodec(Codec):
    """Stores the tensor's storage bytes little-endian; bfloat16 travels as uint16 bits."""

    codec_id = "raw"
    lossless = True

    def __init__(self, dtype: str):
        if dtype not in STORAGE_DTYPES:
            raise CorruptPayload(f"raw codec: unsupported dtype {dtype!r}")
        self.dtype = dtype
        self._np = STORAGE_DTYPES[dtype].newbyteorder("<")

    def encode(self, array: np.ndarray) -> bytes:
        return np.ascontiguousarray(array, dtype=self._np).tobytes()

    def decode(self, data: bytes, shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape, dtype=np.int64))
        if len(data) != count * self._np.itemsize:
            raise CorruptPayload(
                f"raw payload has {len(data)} bytes, expected {count * self._np.itemsize}"
            )
        return np.frombuffer(data, dtype=self._np).astype(self._np.newbyteorder("=")).reshape(shape)

    def get_config(self) -> dict:
        return {"id": self.codec_id, "dtype": self.dtype}
