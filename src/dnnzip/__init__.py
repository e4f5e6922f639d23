"""dnnzip: make trained neural networks cost what their information content costs."""

__version__ = "0.1.0"
