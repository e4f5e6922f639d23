"""Lossless coders of integer symbols.

* ``bitio``   — MSB-first bit packing in 64-bit words, usable from numba kernels.
* ``huffman`` — canonical, length-limited Huffman codes with a compact table
  (Deep Compression's entropy coder for k-means indices and run-length gaps).
* ``golomb``  — Golomb–Rice coding of sorted positions as gaps (the SBC/STC wire format).

Import the submodules directly (``from dnnzip.coding import huffman``); nothing is loaded
here, so importing the package costs no numba compilation.
"""
