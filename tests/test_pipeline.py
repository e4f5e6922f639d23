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


def test_nonweight_qp_codes_vectors_and_keeps_tiny_ones_raw(tmp_path):
    """``nonweight_qp``: 1-D float tensors are coded at Δ = 2^(qp/4) (error ≤ Δ/2); one whose
    stream would outgrow its raw bytes, integer buffers and ``keep`` matches stay exact."""
    g = torch.Generator().manual_seed(3)
    sd = {"fc.weight": torch.randn(64, 32, generator=g), "fc.bias": torch.randn(300, generator=g),
          "tiny.bias": torch.randn(4, generator=g), "norm.weight": torch.randn(300, generator=g),
          "steps": torch.arange(300)}
    path = tmp_path / "v.dnnz"
    rep = dnnzip.compress(sd, path, method="deepcabac", qp=-24, nonweight_qp=-40,
                          keep="^norm", progress=False)
    codec = {r.name: r.codec for r in rep.rows}
    assert codec == {"fc.weight": "deepcabac", "fc.bias": "deepcabac", "tiny.bias": "raw",
                     "norm.weight": "raw", "steps": "raw"}
    back = dnnzip.decompress(path, progress=False)
    step = 2.0 ** (-40 / 4)
    assert float((back["fc.bias"] - sd["fc.bias"]).abs().max()) <= step / 2 * (1 + 1e-6)
    for k in ("tiny.bias", "norm.weight", "steps"):
        assert torch.equal(back[k], sd[k]), k
    by_name = {r.name: r for r in rep.rows}
    assert by_name["fc.bias"].compressed_bytes < 300 * 4
    # without the option every vector is stored as it is
    plain = dnnzip.compress(sd, tmp_path / "p.dnnz", method="deepcabac", qp=-24, progress=False)
    assert {r.name for r in plain.rows if r.codec == "raw"} == set(sd) - {"fc.weight"}


def test_nonweight_qp_bad_values_and_nonfinite_bias(tmp_path):
    import pytest

    from dnnzip.codec import DnnzipError, InvalidOption

    sd = {"fc.weight": torch.randn(8, 8), "fc.bias": torch.randn(64)}
    for bad in (float("nan"), 500.0):
        with pytest.raises(InvalidOption, match="nonweight_qp"):
            dnnzip.compress(sd, tmp_path / "x.dnnz", method="deepcabac", nonweight_qp=bad,
                            progress=False)
    sd["fc.bias"][3] = float("inf")
    with pytest.raises(DnnzipError, match="'fc.bias' has 1 NaN/Inf"):
        dnnzip.compress(sd, tmp_path / "y.dnnz", method="deepcabac", nonweight_qp=-40,
                        progress=False)
    assert not (tmp_path / "y.dnnz").exists()


def test_same_model_and_options_give_the_same_bytes(tmp_path, state_dict):
    """No wall time or other run-dependent value is stored in the file."""
    a, b = tmp_path / "a.dnnz", tmp_path / "b.dnnz"
    dnnzip.compress(state_dict, a, method="deepcabac", qp=-28, progress=False)
    dnnzip.compress(state_dict, b, method="deepcabac", qp=-28, progress=False)
    assert a.read_bytes() == b.read_bytes()
