"""dnnzip: make trained neural networks cost what their information content costs.

    dnnzip.compress(model, "model.dnnz", sparsity=0.9, bits=5)   # store
    state_dict = dnnzip.decompress("model.dnnz")
    with dnnzip.open("model.dnnz") as f: w = f.read("fc1.weight")
"""

__version__ = "0.1.0"

from .codec import CorruptPayload, DnnzipError, InvalidOption, Quantized  # noqa: E402
from .pipeline import compress, decompress, open  # noqa: E402

__all__ = [
    "CorruptPayload",
    "DnnzipError",
    "InvalidOption",
    "Quantized",
    "__version__",
    "compress",
    "decompress",
    "open",
]
