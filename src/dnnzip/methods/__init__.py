"""Tensor codecs: each chains prune/quant/coding stages into one ``Codec`` (see ``dnnzip.codec``)."""
