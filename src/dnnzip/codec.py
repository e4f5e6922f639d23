"""Tensor codecs: the unit the container records for every tensor.

A codec turns one tensor into bytes and back, numcodecs-style:

    codec.encode(array) -> bytes            # array: any shape, float32 for lossy codecs
    codec.decode(data, shape) -> ndarray    # float32 (or the raw dtype for passthrough)
    codec.get_config() -> dict              # JSON-able, includes "id"
    Codec.from_config(config) -> codec      # rebuilds the exact codec from the file alone

Lossy codecs also expose ``decode_quantized(data, shape) -> Quantized``: the integer
levels and the codebook they index, so compute formats (CER/CSER) can be built from a
stored tensor without a dense float copy.

Every codec class registers itself with ``@register``; ``codec_from_config`` looks the id up.
A decoder never trusts a length it reads: payload parsing raises ``CorruptPayload``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np


class DnnzipError(Exception):
    """Base class of every error dnnzip reports to a user (one clear line)."""


class CorruptPayload(DnnzipError):
    """A payload does not parse: truncated, inconsistent lengths, bad symbols."""


class InvalidOption(DnnzipError, ValueError):
    """An option that cannot be honoured (bits=0, sparsity=1.5, unknown method ...)."""


@dataclass(frozen=True)
class Quantized:
    """A quantized tensor: ``weights == codebook[indices]`` elementwise.

    indices: integer array of the tensor's shape (uint8/16/32);
    codebook: float32 array of the distinct reconstruction values.
    """

    indices: np.ndarray
    codebook: np.ndarray

    def dequantize(self) -> np.ndarray:
        return self.codebook[self.indices]


class Codec:
    """Base class: subclasses set ``codec_id`` and implement the four verbs."""

    codec_id: ClassVar[str] = ""
    lossless: ClassVar[bool] = False

    def encode(self, array: np.ndarray) -> bytes:
        raise NotImplementedError

    def decode(self, data: bytes, shape: tuple[int, ...]) -> np.ndarray:
        raise NotImplementedError

    def encode_with_stats(self, array: np.ndarray) -> tuple[bytes, dict[str, Any]]:
        """``encode`` plus what the encoder knows for the report (kept in the index):
        e.g. ``snr_db``, ``entropy_bits`` (order-0 entropy of the levels, total bits),
        ``distinct`` values, ``sparsity``. The base class reports nothing extra."""
        return self.encode(array), {}

    def decode_quantized(self, data: bytes, shape: tuple[int, ...]) -> Quantized:
        raise NotImplementedError(f"codec {self.codec_id!r} does not produce quantized levels")

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Codec:
        params = {k: v for k, v in config.items() if k != "id"}
        return cls(**params)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "id")
        return f"{type(self).__name__}({params})"


_REGISTRY: dict[str, type[Codec]] = {}


def register(cls: type[Codec]) -> type[Codec]:
    """Class decorator: make ``cls`` reachable from its config id."""
    if not cls.codec_id:
        raise TypeError(f"{cls.__name__} has no codec_id")
    _REGISTRY[cls.codec_id] = cls
    return cls


def codec_from_config(config: dict[str, Any]) -> Codec:
    """Rebuild a codec from the JSON config stored in a container index."""
    if not isinstance(config, dict) or "id" not in config:
        raise CorruptPayload(f"codec config is not an object with an 'id': {config!r}")
    _load_builtin_codecs()
    cls = _REGISTRY.get(config["id"])
    if cls is None:
        raise CorruptPayload(
            f"unknown codec {config['id']!r} (known: {', '.join(sorted(_REGISTRY))})"
        )
    try:
        return cls.from_config(config)
    except TypeError as exc:
        raise CorruptPayload(f"bad config for codec {config['id']!r}: {exc}") from exc


def _load_builtin_codecs() -> None:
    """Import the modules that define codecs so that their ``@register`` runs."""
    from . import methods  # noqa: F401  (registers the built-in tensor codecs)
