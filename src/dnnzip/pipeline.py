"""The store pipeline: model → tensors → method's codec per tensor → .dnnz, and back.

Tensors are read, encoded and written one at a time, so memory holds one tensor (plus
the codec's working set), never the whole model twice.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__
from .codec import DnnzipError, InvalidOption
from .container.dnnz import DnnzReader, DnnzWriter, check_output
from .io.readers import TensorSource, open_model
from .io.tensors import FLOAT_DTYPES, ITEMSIZE, float32_array, storage_array
from .io.writers import write_safetensors, write_torch
from .methods import get_method
from .methods.raw import RawCodec
from .report import CompressionReport, TensorRow

DEFAULT_METHOD = "deepcompression"


def _coded_lossily(name: str, shape: tuple[int, ...], dtype: str, keep: re.Pattern | None) -> bool:
    """Float tensors of ≥ 2 dims are coded; 1-D (biases, norms), scalars, integer buffers
    and names matching ``keep`` pass through losslessly."""
    if dtype not in FLOAT_DTYPES or len(shape) < 2:
        return False
    if keep is not None and keep.search(name):
        return False
    return int(np.prod(shape)) > 0


def _vector(name: str, shape: tuple[int, ...], dtype: str, keep: re.Pattern | None) -> bool:
    """A non-empty 1-D float tensor (bias, norm) not matched by ``keep``: the method may code
    it (``Method.vector_codec``), else it passes through losslessly."""
    if dtype not in FLOAT_DTYPES or len(shape) != 1 or shape[0] == 0:
        return False
    return keep is None or not keep.search(name)


def _compile_keep(keep: str | None) -> re.Pattern | None:
    if keep is None:
        return None
    try:
        return re.compile(keep)
    except re.error as exc:
        raise InvalidOption(f"--keep {keep!r} is not a valid regular expression ({exc})") from None


def _float_tensors(src: TensorSource, names: list[str]):
    for name in names:
        arr = float32_array(src.get(name))
        _check_finite(src, name, arr)
        yield name, arr


def _check_finite(src: TensorSource, name: str, arr: np.ndarray) -> None:
    if not np.isfinite(arr).all():
        bad = int(np.size(arr) - np.isfinite(arr).sum())
        raise DnnzipError(f"{src.description}: tensor {name!r} has {bad} NaN/Inf values")


def compress(
    source: Any,
    output: str | os.PathLike,
    method: str = DEFAULT_METHOD,
    *,
    keep: str | None = None,
    force: bool = False,
    progress: bool | None = None,
    metadata: dict[str, Any] | None = None,
    **options: Any,
) -> CompressionReport:
    """Compress a model (path, state_dict or nn.Module) into the .dnnz file ``output``.

    ``options`` go to the method (e.g. ``sparsity=0.9, bits=5`` for Deep Compression).
    Returns a report with per-tensor rows and totals. Nothing is written unless the whole
    model was coded: the file appears by atomic rename at the end.
    """
    check_output(output, force)
    keep_re = _compile_keep(keep)
    method_cls = get_method(method)
    try:
        meth = method_cls(**options)
    except TypeError as exc:
        raise InvalidOption(f"method {method!r}: {exc}") from None
    src = open_model(source)
    names = src.names
    if not names:
        raise DnnzipError(f"{src.description}: holds no tensors")
    shapes = {n: src.shape(n) for n in names}
    dtypes = {n: src.dtype(n) for n in names}
    lossy = [n for n in names if _coded_lossily(n, shapes[n], dtypes[n], keep_re)]
    t_start = time.perf_counter()
    meth.prepare(_float_tensors(src, lossy))

    meta = {
        "source": str(src.description),
        "dnnzip": __version__,
        "method": meth.describe(),
        "keep": keep,
    }
    meta.update(metadata or {})
    rows: list[TensorRow] = []
    lossy_set = set(lossy)
    total = sum(int(np.prod(shapes[n])) * ITEMSIZE[dtypes[n]] for n in names)
    with (
        DnnzWriter(output, meta, force=force) as writer,
        tqdm(
            total=total, unit="B", unit_scale=True, desc="compress", disable=_quiet(progress)
        ) as bar,
    ):
        for name in names:
            t0 = time.perf_counter()
            tensor = src.get(name)
            shape, dtype = shapes[name], dtypes[name]
            codec = None
            if name in lossy_set:
                arr = float32_array(tensor)
                _check_finite(src, name, arr)
                codec = meth.codec_for(name, arr)
            elif _vector(name, shape, dtype, keep_re):
                arr = float32_array(tensor)
                codec = meth.vector_codec(name, arr)
                if codec is not None:
                    _check_finite(src, name, arr)
            if codec is not None:
                try:
                    payload, stats = codec.encode_with_stats(arr)
                except DnnzipError as exc:
                    raise type(exc)(f"{src.description}: tensor {name!r}: {exc}") from None
                if name not in lossy_set and len(payload) >= arr.size * ITEMSIZE[dtype]:
                    codec = None  # a tiny vector: the coded stream's header costs more
            if codec is None:
                codec = RawCodec(dtype)
                payload, stats = codec.encode(storage_array(tensor)), {}
            stats = {k: _jsonable(v) for k, v in stats.items()}
            entry = writer.add_payload(name, shape, dtype, codec, payload, stats)
            row = TensorRow.from_entry(entry)
            # wall time goes to the report, not into the file: the same model and options
            # give the same bytes
            row.stats["seconds"] = time.perf_counter() - t0
            rows.append(row)
            bar.update(int(np.prod(shape)) * ITEMSIZE[dtype])
            del tensor
    src.close()
    return CompressionReport(
        path=Path(output),
        rows=rows,
        file_bytes=Path(output).stat().st_size,
        seconds=time.perf_counter() - t_start,
        metadata=meta,
    )


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.floating, float)):
        v = float(v)
        return v if np.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


def _quiet(progress: bool | None) -> bool | None:
    """tqdm's ``disable``: None lets tqdm hide the bar when stderr is not a terminal."""
    return None if progress is None else not progress


def open(path: str | os.PathLike) -> DnnzReader:  # noqa: A001 - mirrors the builtin on purpose
    """Open a .dnnz file for random access: ``.names``, ``.read(name)``, ``.read_quantized``."""
    return DnnzReader(path)


def decompress(
    path: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    force: bool = False,
    progress: bool | None = None,
) -> dict[str, torch.Tensor] | Path:
    """Restore a .dnnz file: to a state_dict in memory, or (``output`` given) to a
    ``.safetensors`` file (streamed, one tensor at a time) or a ``.pt`` file."""
    with DnnzReader(path) as reader:
        if output is None:
            return {
                n: reader.read_torch(n)
                for n in tqdm(reader.names, desc="decompress", disable=_quiet(progress))
            }
        out = Path(output)
        suffix = out.suffix.lower()
        if suffix not in (".safetensors", ".pt", ".pth"):
            raise InvalidOption(f"{out}: output must end in .safetensors, .pt or .pth")
        check_output(out, force)
        if suffix == ".safetensors":
            specs = [(n, tuple(reader.entry(n)["shape"]), reader.entry(n)["dtype"]) for n in reader]
            with tqdm(total=len(specs), desc="decompress", disable=_quiet(progress)) as bar:
                write_safetensors(
                    out,
                    specs,
                    lambda n: storage_array(reader.read_torch(n)),
                    metadata={"dnnzip_source": str(path)},
                    force=force,
                    on_tensor=lambda _: bar.update(1),
                )
        else:
            tensors = {
                n: reader.read_torch(n)
                for n in tqdm(reader.names, desc="decompress", disable=_quiet(progress))
            }
            write_torch(out, tensors, force=force)
        return out
