"""Read models tensor by tensor: safetensors files, PyTorch state_dicts, Hugging Face folders.

A ``TensorSource`` lists names, shapes and dtypes without loading data and hands out one
tensor at a time, so compressing a model never holds two copies of it: safetensors files
are memory-mapped by ``safe_open``; ``.pt``/``.pth`` files are loaded with
``weights_only=True`` and ``mmap=True`` where the file format allows it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from ..codec import DnnzipError
from .tensors import dtype_name

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pt", ".pth", ".bin")


class ModelReadError(DnnzipError):
    """A model file or folder that cannot be read as tensors."""


class TensorSource:
    """Lazily readable named tensors: ``names``, ``shape(n)``, ``dtype(n)``, ``get(n)``."""

    def __init__(self, description: str):
        self.description = description
        self._where: dict[str, object] = {}

    @property
    def names(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        raise NotImplementedError

    def dtype(self, name: str) -> str:
        raise NotImplementedError

    def get(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self.names:
            yield name, self.get(name)

    def close(self) -> None:
        """Release open files."""


class DictSource(TensorSource):
    """An in-memory state_dict (or any mapping of names to tensors)."""

    def __init__(self, tensors: Mapping[str, object], description: str = "state_dict"):
        super().__init__(description)
        for name, t in tensors.items():
            if not isinstance(t, torch.Tensor):
                raise ModelReadError(
                    f"{description}: entry {name!r} is a {type(t).__name__}, not a tensor"
                )
            dtype_name(t, f"{description}: tensor {name!r}: ")
            self._where[str(name)] = t

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._where[name].shape)

    def dtype(self, name: str) -> str:
        return dtype_name(self._where[name])

    def get(self, name: str) -> torch.Tensor:
        return self._where[name]


class SafetensorsSource(TensorSource):
    """One or several safetensors files (a Hugging Face model's shards), memory-mapped."""

    def __init__(self, files: list[Path], description: str):
        from safetensors import safe_open

        super().__init__(description)
        self._handles = []
        for f in files:
            try:
                h = safe_open(str(f), framework="pt")
            except Exception as exc:  # safetensors raises its own error types
                raise ModelReadError(f"{f}: not a readable safetensors file ({exc})") from exc
            self._handles.append(h)
            for name in h.keys():
                if name in self._where:
                    raise ModelReadError(f"{f}: tensor {name!r} also appears in another shard")
                self._where[name] = h

    def _slice(self, name: str):
        return self._where[name].get_slice(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._slice(name).get_shape())

    def dtype(self, name: str) -> str:
        code = self._slice(name).get_dtype()
        names = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                 "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
                 "BOOL": "bool"}  # fmt: skip
        if code not in names:
            raise ModelReadError(f"{self.description}: tensor {name!r}: unsupported dtype {code}")
        return names[code]

    def get(self, name: str) -> torch.Tensor:
        return self._where[name].get_tensor(name)

    def close(self) -> None:
        self._handles.clear()


def _unwrap_checkpoint(obj: object, path: Path) -> Mapping[str, object]:
    """A state_dict, or a checkpoint dict holding one under 'state_dict' / 'model'."""
    if not isinstance(obj, Mapping):
        raise ModelReadError(f"{path}: holds a {type(obj).__name__}, not a state_dict")
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    for key in ("state_dict", "model", "model_state_dict"):
        inner = obj.get(key)
        if (
            isinstance(inner, Mapping)
            and inner
            and all(isinstance(v, torch.Tensor) for v in inner.values())
        ):
            return inner
    return obj  # DictSource names the first non-tensor entry


def open_model(source: object) -> TensorSource:
    """A ``TensorSource`` for a path (file or HF folder), a state_dict, or an ``nn.Module``."""
    if isinstance(source, TensorSource):
        return source
    if isinstance(source, torch.nn.Module):
        return DictSource(source.state_dict(), type(source).__name__)
    if isinstance(source, Mapping):
        return DictSource(source)
    if not isinstance(source, (str, os.PathLike)):
        raise ModelReadError(f"cannot read a model from a {type(source).__name__}")
    path = Path(source)
    if not path.exists():
        raise ModelReadError(f"{path}: no such file or directory")
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise ModelReadError(f"{path}: folder has no *.safetensors files")
        return SafetensorsSource(files, str(path))
    with open(path, "rb") as f:
        head = f.read(8)
    if path.suffix in TORCH_SUFFIXES or head.startswith(b"PK"):
        return _torch_source(path)
    if path.suffix in SAFETENSORS_SUFFIXES or len(head) == 8:
        return SafetensorsSource([path], str(path))
    raise ModelReadError(f"{path}: not a model file (expected .safetensors, .pt or .pth)")


def _load_error_reason(exc: BaseException) -> str:
    """The cause in torch.load's error, without its advice to load with weights_only=False
    (which would run arbitrary code from the file: dnnzip never does)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        cause = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0]
        cause = " ".join(cause.split())
        return f"refused by the weights-only unpickler: {cause}" if cause else "refused"
    return text.splitlines()[0] if text else type(exc).__name__


def _torch_source(path: Path) -> DictSource:
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors come in many types
        raise ModelReadError(
            f"{path}: not a readable PyTorch state_dict ({_load_error_reason(exc)})"
        ) from exc
    return DictSource(_unwrap_checkpoint(obj, path), str(path))
