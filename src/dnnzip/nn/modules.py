"""PyTorch layers that compute from CER/CSER/CSR matrices instead of a dense weight.

``CSERLinear`` computes y = x·Wᵀ + b with W held in a ``dnnzip.formats`` matrix (CSER by
default, any format works); ``CSERConv2d`` lowers a convolution to the same product with
im2col (``torch.nn.functional.unfold``): columns (C·kh·kw) × (N·L) → W·columns. Both are for
inference: the weight is a compressed constant, so no gradient flows to it (inputs that require
grad are refused rather than silently detached).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..codec import InvalidOption
from ..formats import FORMATS, MatrixFormat


def _as_matrix(weight: torch.Tensor | np.ndarray | MatrixFormat, fmt: str) -> MatrixFormat:
    if isinstance(weight, MatrixFormat):
        return weight
    if isinstance(weight, torch.Tensor):
        weight = weight.detach().cpu().numpy()
    if fmt not in FORMATS:
        raise InvalidOption(f"unknown format {fmt!r} (known: {', '.join(sorted(FORMATS))})")
    return FORMATS[fmt].from_dense(weight)


def _to_numpy(x: torch.Tensor) -> np.ndarray:
    if x.requires_grad and torch.is_grad_enabled():
        raise InvalidOption("CSER layers are inference-only: call them under torch.no_grad()")
    if x.dtype not in (torch.float32, torch.float64):
        raise InvalidOption(f"input dtype {x.dtype} is not float32/float64")
    return x.detach().cpu().numpy()


class CSERLinear(nn.Module):
    """Linear layer y = x·Wᵀ + b whose W is a CER/CSER/CSR (or dense) matrix.

    Input (..., in_features) → output (..., out_features). A single row uses the mat-vec
    kernel; several rows (tokens, batch) go through the batch kernel as X = xᵀ (n × B).
    """

    def __init__(self, matrix: MatrixFormat, bias: torch.Tensor | None = None,
                 threads: int | None = None):
        super().__init__()
        self.matrix = matrix
        self.out_features, self.in_features = matrix.shape
        if bias is not None:
            bias = torch.as_tensor(bias).detach().clone()
            if bias.shape != (self.out_features,):
                raise InvalidOption(
                    f"bias of shape {tuple(bias.shape)} does not fit {self.out_features} outputs"
                )
        self.register_buffer("bias", bias)
        self.threads = threads

    @classmethod
    def from_linear(cls, linear: nn.Linear, format: str = "cser",
                    threads: int | None = None) -> CSERLinear:
        """Lossless conversion of a (quantized) ``nn.Linear``."""
        return cls(_as_matrix(linear.weight, format), linear.bias, threads)

    @property
    def format(self) -> str:
        return self.matrix.format_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise InvalidOption(
                f"input has {x.shape[-1]} features, layer expects {self.in_features}"
            )
        lead = x.shape[:-1]
        xs = _to_numpy(x).reshape(-1, self.in_features)
        if xs.shape[0] == 1:
            y = self.matrix.dot(xs[0], threads=self.threads)[None, :]
        else:
            y = self.matrix.dot(xs.T, threads=self.threads).T
        out = torch.from_numpy(np.ascontiguousarray(y)).to(x.dtype)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"format={self.format}, nnz={self.matrix.nnz}, bias={self.bias is not None}")


class CSERConv2d(nn.Module):
    """2-D convolution (groups = 1) computed as W·im2col(x) from a CER/CSER/CSR matrix.

    W is the (out_channels) × (in_channels·kh·kw) reshaped kernel; unfold gives the columns
    of all N·L output positions, so one batch product serves the whole input.
    """

    def __init__(self, matrix: MatrixFormat, in_channels: int, kernel_size: tuple[int, int],
                 bias: torch.Tensor | None = None, stride: tuple[int, int] = (1, 1),
                 padding: tuple[int, int] = (0, 0), dilation: tuple[int, int] = (1, 1),
                 threads: int | None = None):
        super().__init__()
        kh, kw = kernel_size
        if matrix.shape[1] != in_channels * kh * kw:
            raise InvalidOption(
                f"matrix has {matrix.shape[1]} columns, kernel needs {in_channels}·{kh}·{kw}"
            )
        self.matrix = matrix
        self.out_channels = matrix.shape[0]
        self.in_channels = in_channels
        self.kernel_size = (kh, kw)
        self.stride, self.padding, self.dilation = tuple(stride), tuple(padding), tuple(dilation)
        if bias is not None:
            bias = torch.as_tensor(bias).detach().clone()
        self.register_buffer("bias", bias)
        self.threads = threads

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, format: str = "cser",
                  threads: int | None = None) -> CSERConv2d:
        """Lossless conversion of a (quantized) ``nn.Conv2d`` with groups = 1, zero padding."""
        if conv.groups != 1:
            raise InvalidOption(f"only groups=1 convolutions convert (got groups={conv.groups})")
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise InvalidOption("only numeric zero padding converts")
        w = conv.weight.detach().reshape(conv.out_channels, -1)
        return cls(_as_matrix(w, format), conv.in_channels, conv.kernel_size, conv.bias,
                   conv.stride, conv.padding, conv.dilation, threads)

    @property
    def format(self) -> str:
        return self.matrix.format_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise InvalidOption(
                f"input of shape {tuple(x.shape)} is not (N, {self.in_channels}, H, W)"
            )
        n, _, h, w = x.shape
        kh, kw = self.kernel_size
        ho = (h + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        wo = (w + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        cols = nn.functional.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)
        # (N, C·kh·kw, L) → (C·kh·kw, N·L): one batch product for every output position
        xs = _to_numpy(cols.permute(1, 0, 2).reshape(cols.shape[1], -1))
        y = self.matrix.dot(xs, threads=self.threads)  # (out, N·L)
        out = torch.from_numpy(np.ascontiguousarray(y)).to(x.dtype)
        out = out.reshape(self.out_channels, n, ho * wo).permute(1, 0, 2)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)[None, :, None]
        return out.reshape(n, self.out_channels, ho, wo)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, format={self.format}, "
                f"nnz={self.matrix.nnz}")
