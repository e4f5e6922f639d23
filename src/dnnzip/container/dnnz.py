"""The .dnnz container: tensors streamed in, one tensor read back without the others.

Layout (all integers little-endian; see docs/format.md):

    header   b"DNNZ" | u16 major | u16 minor                                  8 bytes
    payloads one after another, each exactly as its codec produced it
    index    zlib-deflated UTF-8 JSON: {"format": …, "metadata": {…}, "tensors": [entry, …]}
    trailer  u64 index_offset | u64 index_length | u32 crc32(index) | b"ZNND"  24 bytes

(Version 1 files, whose index is plain JSON, are still read.) The index is deflated because
on a small model its JSON — names, codec configs, stats — is a tenth of the file.

An index entry: name, shape, dtype (of the original tensor), codec (its JSON config),
offset, length, crc32 (of the payload) and free-form stats. The writer streams payloads
to a temporary file beside the target and renames it into place only when the index and
trailer are written, so a failed run leaves nothing behind. The reader checks every
offset and length against the file before it reads, and every payload's CRC32.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..codec import Codec, CorruptPayload, DnnzipError, Quantized, codec_from_config

MAGIC = b"DNNZ"
END_MAGIC = b"ZNND"
VERSION = (2, 0)
#: major versions this reader understands: 1 (plain JSON index), 2 (deflated index)
READABLE_MAJORS = (1, 2)
#: a deflated index may inflate to at most this (a reader never trusts a length)
MAX_INDEX_BYTES = 1 << 28
HEADER = struct.Struct("<4sHH")
TRAILER = struct.Struct("<QQI4s")

# dtypes a tensor may have in a container (names as in safetensors / torch)
DTYPES = (
    "float64", "float32", "float16", "bfloat16",
    "int64", "int32", "int16", "int8", "uint8", "bool",
)  # fmt: skip


class ContainerError(DnnzipError):
    """A .dnnz file that cannot be read: not a container, truncated, corrupted, wrong version."""


class OutputExists(DnnzipError):
    """The output path exists and the user did not ask to overwrite it."""


def check_output(path: str | os.PathLike, force: bool) -> Path:
    """Refuse to overwrite an existing file unless ``force``; the directory must exist."""
    path = Path(path)
    if path.exists() and not force:
        raise OutputExists(f"{path}: output exists (use --force to overwrite)")
    if path.is_dir():
        raise OutputExists(f"{path}: output is a directory")
    if not path.parent.exists():
        raise DnnzipError(f"{path}: directory {path.parent} does not exist")
    return path


class AtomicFile:
    """A temporary file beside ``path`` that replaces it only on ``commit()``."""

    def __init__(self, path: str | os.PathLike, force: bool = False):
        self.path = check_output(path, force)
        self.force = force
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
        )
        self.tmp = Path(tmp)
        self.file = os.fdopen(fd, "wb")

    def commit(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        # re-check: the target may have appeared while we were writing
        if self.path.exists() and not self.force:
            self.discard()
            raise OutputExists(f"{self.path}: output appeared while writing (use --force)")
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        if not self.file.closed:
            self.file.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard()
        elif not self.file.closed:
            self.commit()


class DnnzWriter:
    """Stream tensors into a .dnnz file: ``with DnnzWriter(path) as w: w.add(...)``."""

    def __init__(
        self, path: str | os.PathLike, metadata: dict[str, Any] | None = None, force: bool = False
    ):
        self._out = AtomicFile(path, force)
        self.path = self._out.path
        self.metadata = dict(metadata or {})
        self.entries: list[dict[str, Any]] = []
        self._names: set[str] = set()
        self._out.file.write(HEADER.pack(MAGIC, *VERSION))
        self._offset = HEADER.size

    def add_payload(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: str,
        codec: Codec,
        payload: bytes,
        stats: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Append an encoded tensor; returns its index entry."""
        if name in self._names:
            raise DnnzipError(f"{self.path}: tensor {name!r} added twice")
        if dtype not in DTYPES:
            raise DnnzipError(f"{self.path}: tensor {name!r} has unsupported dtype {dtype}")
        self._out.file.write(payload)
        entry = {
            "name": name,
            "shape": [int(s) for s in shape],
            "dtype": dtype,
            "codec": codec.get_config(),
            "offset": self._offset,
            "length": len(payload),
            "crc32": zlib.crc32(payload),
            "stats": dict(stats or {}),
        }
        self._offset += len(payload)
        self.entries.append(entry)
        self._names.add(name)
        return entry

    def close(self) -> None:
        index = json.dumps(
            {
                "format": f"dnnz {VERSION[0]}.{VERSION[1]}",
                "metadata": self.metadata,
                "tensors": self.entries,
            },
            separators=(",", ":"),
        ).encode()
        index = zlib.compress(index, 9)
        self._out.file.write(index)
        self._out.file.write(TRAILER.pack(self._offset, len(index), zlib.crc32(index), END_MAGIC))
        self._out.commit()

    def abort(self) -> None:
        self._out.discard()

    def __enter__(self) -> DnnzWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class DnnzReader:
    """Random access to the tensors of a .dnnz file (memory-mapped, nothing decoded upfront)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise ContainerError(f"{self.path}: no such file")
        if self.path.is_dir():
            raise ContainerError(f"{self.path}: is a directory, not a .dnnz file")
        self._file = open(self.path, "rb")
        try:
            self._parse()
        except Exception:
            self._file.close()
            raise

    def _fail(self, what: str) -> ContainerError:
        return ContainerError(f"{self.path}: {what}")

    def _parse(self) -> None:
        size = os.fstat(self._file.fileno()).st_size
        if size < HEADER.size + TRAILER.size:
            raise self._fail(f"not a .dnnz file (only {size} bytes)")
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        magic, major, minor = HEADER.unpack_from(self._map, 0)
        if magic != MAGIC:
            raise self._fail("not a .dnnz file (bad magic)")
        if major not in READABLE_MAJORS:
            raise self._fail(
                f"format version {major}.{minor} is not supported "
                f"(this dnnzip reads {', '.join(f'{m}.x' for m in READABLE_MAJORS)})"
            )
        index_offset, index_length, index_crc, end = TRAILER.unpack_from(
            self._map, size - TRAILER.size
        )
        if end != END_MAGIC:
            raise self._fail("truncated or damaged (no trailer at the end of the file)")
        if not (HEADER.size <= index_offset and index_offset + index_length == size - TRAILER.size):
            raise self._fail("truncated or damaged (index position does not match the file size)")
        raw = self._map[index_offset : index_offset + index_length]
        if zlib.crc32(raw) != index_crc:
            raise self._fail("index checksum mismatch (file is corrupted)")
        if major >= 2:
            raw = self._inflate(raw)
        try:
            index = json.loads(raw)
            entries = index["tensors"]
            self.metadata: dict[str, Any] = index.get("metadata", {})
        except (ValueError, KeyError, TypeError) as exc:
            raise self._fail(f"index is not valid ({exc})") from exc
        self._entries: dict[str, dict[str, Any]] = {}
        for e in entries:
            self._check_entry(e, index_offset)
            self._entries[e["name"]] = e

    def _inflate(self, raw: bytes) -> bytes:
        """The deflated index, inflated to at most ``MAX_INDEX_BYTES``."""
        d = zlib.decompressobj()
        try:
            out = d.decompress(raw, MAX_INDEX_BYTES)
        except zlib.error as exc:
            raise self._fail(f"index is not valid ({exc})") from None
        if d.unconsumed_tail or d.unused_data or not d.eof:
            raise self._fail("index is not valid (deflate stream too large or incomplete)")
        return out

    def _check_entry(self, e: Any, limit: int) -> None:
        try:
            name, offset, length = e["name"], e["offset"], e["length"]
            shape, dtype = e["shape"], e["dtype"]
            ok = (
                isinstance(name, str)
                and isinstance(offset, int)
                and isinstance(length, int)
                and HEADER.size <= offset
                and length >= 0
                and offset + length <= limit
                and isinstance(shape, list)
                and all(isinstance(s, int) and s >= 0 for s in shape)
                and dtype in DTYPES
                and isinstance(e["crc32"], int)
                and isinstance(e["codec"], dict)
            )
        except (KeyError, TypeError):
            ok = False
        if not ok:
            raise self._fail(f"index entry is not valid: {str(e)[:200]}")

    # --- mapping-like access -------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def entry(self, name: str) -> dict[str, Any]:
        try:
            return self._entries[name]
        except KeyError:
            raise DnnzipError(f"{self.path}: no tensor named {name!r}") from None

    def payload(self, name: str) -> bytes:
        """The raw payload bytes of one tensor, checksum verified."""
        e = self.entry(name)
        data = self._map[e["offset"] : e["offset"] + e["length"]]
        if zlib.crc32(data) != e["crc32"]:
            raise self._fail(f"tensor {name!r}: checksum mismatch (payload is corrupted)")
        return data

    def codec(self, name: str) -> Codec:
        try:
            return codec_from_config(self.entry(name)["codec"])
        except CorruptPayload as exc:
            raise self._fail(f"tensor {name!r}: {exc}") from exc

    def read(self, name: str) -> np.ndarray:
        """Decode one tensor to a numpy array of its shape (float32 for bfloat16 tensors)."""
        e = self.entry(name)
        shape = tuple(e["shape"])
        try:
            arr = self.codec(name).decode(self.payload(name), shape)
        except CorruptPayload as exc:
            raise self._fail(f"tensor {name!r}: {exc}") from exc
        if arr.shape != shape:
            raise self._fail(f"tensor {name!r}: decoded shape {arr.shape} != stored {shape}")
        from ..io.tensors import storage_to_float32

        return storage_to_float32(arr, e["dtype"])

    def read_quantized(self, name: str) -> Quantized:
        """The integer levels and codebook of a lossily coded tensor (no dense float copy)."""
        e = self.entry(name)
        try:
            return self.codec(name).decode_quantized(self.payload(name), tuple(e["shape"]))
        except CorruptPayload as exc:
            raise self._fail(f"tensor {name!r}: {exc}") from exc

    def read_torch(self, name: str):
        """Decode one tensor to a torch tensor of its original dtype."""
        from ..io.tensors import numpy_to_torch

        return numpy_to_torch(self.read(name), self.entry(name)["dtype"])

    def close(self) -> None:
        if getattr(self, "_map", None) is not None:
            self._map.close()
            self._map = None
        self._file.close()

    def __enter__(self) -> DnnzReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def file_size(self) -> int:
        return self.path.stat().st_size
