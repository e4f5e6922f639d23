"""Bounds-checked packing of codec payload headers (little-endian).

``PayloadWriter`` appends fields; ``PayloadReader`` reads them back and raises
``CorruptPayload`` instead of reading past the end or accepting an absurd length.
"""

from __future__ import annotations

import struct

import numpy as np

from ..codec import CorruptPayload


class PayloadWriter:
    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def u8(self, v: int) -> None:
        self._parts.append(struct.pack("<B", v))

    def u32(self, v: int) -> None:
        self._parts.append(struct.pack("<I", v))

    def u64(self, v: int) -> None:
        self._parts.append(struct.pack("<Q", v))

    def f64(self, v: float) -> None:
        self._parts.append(struct.pack("<d", v))

    def array(self, a: np.ndarray, dtype: str) -> None:
        self._parts.append(
            np.ascontiguousarray(a, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
        )

    def blob(self, b: bytes) -> None:
        """Length-prefixed (u64) bytes."""
        self.u64(len(b))
        self._parts.append(bytes(b))

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


class PayloadReader:
    def __init__(self, data: bytes | memoryview):
        self.data = memoryview(data)
        self.pos = 0

    def _take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise CorruptPayload(
                f"payload truncated: {what} needs {n} bytes at offset {self.pos}, "
                f"{len(self.data) - self.pos} left"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, what: str = "u8") -> int:
        return self._take(1, what)[0]

    def u32(self, what: str = "u32") -> int:
        return struct.unpack("<I", self._take(4, what))[0]

    def u64(self, what: str = "u64") -> int:
        return struct.unpack("<Q", self._take(8, what))[0]

    def f64(self, what: str = "f64") -> float:
        return struct.unpack("<d", self._take(8, what))[0]

    def array(self, count: int, dtype: str, what: str = "array") -> np.ndarray:
        dt = np.dtype(dtype).newbyteorder("<")
        raw = self._take(count * dt.itemsize, what)
        return np.frombuffer(raw, dtype=dt).astype(dt.newbyteorder("="))

    def blob(self, what: str = "blob") -> bytes:
        n = self.u64(f"{what} length")
        return bytes(self._take(n, what))

    def expect_end(self) -> None:
        if self.pos != len(self.data):
            raise CorruptPayload(
                f"payload has {len(self.data) - self.pos} unexpected trailing bytes"
            )
