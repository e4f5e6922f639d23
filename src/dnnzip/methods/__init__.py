"""Tensor codecs: each chains prune/quant/coding stages into one ``Codec`` (``dnnzip.codec``)."""

from . import deepcabac, deepcompression, raw  # noqa: F401  (register codecs and methods)
from .base import Method, get_method, method_names, register_method

__all__ = ["Method", "get_method", "method_names", "register_method"]
