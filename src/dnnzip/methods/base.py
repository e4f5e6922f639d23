"""A compression *method* decides, tensor by tensor, which codec (with which parameters) to use.

The pipeline streams a model's tensors through ``Method.codec_for``; a method that needs a
global view first (e.g. a step-size search against a whole-model target) overrides
``prepare``, which receives the same stream once before encoding starts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np

from ..codec import Codec


class Method:
    """Base class of the compression methods selectable with ``--method``."""

    name: ClassVar[str] = ""

    def prepare(self, tensors: Iterable[tuple[str, np.ndarray]]) -> None:
        """Optional global pass over the (float32) tensors to be coded lossily."""

    def codec_for(self, name: str, array: np.ndarray) -> Codec:
        """The codec that will encode ``array`` (float32, the tensor's shape)."""
        raise NotImplementedError

    def vector_codec(self, name: str, array: np.ndarray) -> Codec | None:
        """The codec of a 1-D float tensor (bias, norm), or None: stored as it is (default)."""
        return None

    def describe(self) -> dict[str, Any]:
        """The method's options, recorded in the container metadata."""
        return {"method": self.name}


_METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` selectable by ``cls.name``."""
    _METHODS[cls.name] = cls
    return cls


def method_names() -> list[str]:
    from .. import methods  # noqa: F401

    return sorted(_METHODS)


def get_method(name: str) -> type[Method]:
    from ..codec import InvalidOption

    names = method_names()
    if name not in _METHODS:
        raise InvalidOption(f"unknown method {name!r} (choose from: {', '.join(names)})")
    return _METHODS[name]
