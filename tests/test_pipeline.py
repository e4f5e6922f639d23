"""Whole-model round trips through compress/decompress, over random models (hypothesis)."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dnnzip

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.int64,
          torch.uint8, torch.bool]  # fmt: skip


@st.composite
def models(draw):
    n = draw(st.integers(1, 5))
    out = {}
    for i in range(n):
        shape = tuple(draw(st.lists(st.integers(1, 9), min_size=0, max_size=4)))
        dtype = draw(st.sampled_from(DTYPES))
        scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
        g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
        t = torch.randn(shape, generator=g, dtype=torch.float64) * scale
        out[f"layer{i}.w"] = t.to(dtype) if dtype.is_floating_point else (t * 10).to(dtype)
    return out


@settings(max_examples=40, deadline=None)
@given(sd=models(), bits=st.integers(1, 8), sparsity=st.one_of(st.none(), st.floats(0, 0.95)))
def test_round_trip_random_models(tmp_path_factory, sd, bits, sparsity):
    path = tmp_path_factory.mktemp("m") / "m.dnnz"
    opts = {"bits": bits} if sparsity is None else {"bits": bits, "sparsity": sparsity}
    report = dnnzip.compress(sd, path, progress=False, **opts)
    assert report.file_bytes == path.stat().st_size
    back = dnnzip.decompress(path, progress=False)
    assert list(back) == list(sd)
    for name, t in sd.items():
        r = back[name]
        assert r.dtype == t.dtype and r.shape == t.shape, name
        if t.dtype.is_floating_point and t.dim() >= 2:
            levels = torch.unique(r.float()[r != 0])
            assert levels.numel() <= 2**bits
            if sparsity is not None:
                assert float((r == 0).float().mean()) >= sparsity - 1.0 / t.numel() - 1e-9
        else:
            assert torch.equal(r, t), name  # passthrough is bit-exact


def test_stream_to_safetensors_equals_in_memory(tmp_path, state_dict):
    path = tmp_path / "m.dnnz"
    dnnzip.compress(state_dict, path, sparsity=0.5, progress=False)
    in_memory = dnnzip.decompress(path, progress=False)
    from safetensors.torch import load_file

    dnnzip.decompress(path, tmp_path / "r.safetensors", progress=False)
    streamed = load_file(str(tmp_path / "r.safetensors"))
    for k, v in in_memory.items():
        assert torch.equal(streamed[k], v), k


def test_report_totals_add_up(tmp_path, state_dict):
    report = dnnzip.compress(state_dict, tmp_path / "m.dnnz", sparsity=0.7, progress=False)
    t = report.totals()
    assert t["original_bytes"] == sum(v.numel() * v.element_size() for v in state_dict.values())
    payload = sum(r.compressed_bytes for r in report.rows)
    assert payload < t["compressed_bytes"]  # index, header and trailer are counted too
    assert t["huffman_bits"] <= t["fixed_length_bits"]
    assert np.isclose(t["ratio"], t["original_bytes"] / t["compressed_bytes"])
    assert "total:" in report.table()
