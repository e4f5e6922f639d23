"""Quantization: uniform grid, k-means weight sharing (rate–distortion quantizers live beside)."""
