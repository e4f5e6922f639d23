"""The .dnnz container: streamed writes, random-access checksummed reads."""

from .dnnz import (
    VERSION,
    AtomicFile,
    ContainerError,
    DnnzReader,
    DnnzWriter,
    OutputExists,
    check_output,
)

__all__ = [
    "VERSION",
    "AtomicFile",
    "ContainerError",
    "DnnzReader",
    "DnnzWriter",
    "OutputExists",
    "check_output",
]
