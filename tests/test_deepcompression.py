"""Deep Compression codec: pruning, k-means sharing, capped gaps, Huffman — and bad payloads."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dnnzip.codec import CorruptPayload, InvalidOption, codec_from_config
from dnnzip.methods.deepcompression import (
    DeepCompressionCodec,
    DeepCompressionMethod,
    gap_symbols,
    gaps_from_symbols,
    global_threshold_streamed,
)
from dnnzip.prune import threshold_for_quality, threshold_for_sparsity
from dnnzip.quant.kmeans import kmeans_1d


def weights(shape, seed=0, scale=0.05):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def test_kmeans_linear_init_converges_and_is_exact_on_few_values():
    w = weights(100_000)
    c, labels = kmeans_1d(w, 16, iters=1000, tol=0)
    assert c.size == 16 and np.all(np.diff(c) > 0)
    # Lloyd's fixed point: every centroid is the mean of its members
    for j in range(16):
        np.testing.assert_allclose(c[j], w[labels == j].mean(), rtol=1e-3, atol=1e-6)
    # each weight goes to its nearest centroid
    nearest = np.abs(w[:, None] - c[None, :]).argmin(axis=1)
    assert np.mean(nearest == labels) > 0.999
    few = np.array([0.5, -1.0, 0.5, 2.0], np.float32)
    c2, l2 = kmeans_1d(few, 8)
    np.testing.assert_array_equal(c2[l2], few)


def test_kmeans_rejects_bad_input():
    with pytest.raises(InvalidOption):
        kmeans_1d(np.ones(3, np.float32), 0)
    with pytest.raises(InvalidOption, match="NaN"):
        kmeans_1d(np.array([1.0, np.nan], np.float32), 2)


def test_thresholds():
    w = weights((200, 50))
    t = threshold_for_sparsity(w, 0.9)
    assert abs(np.mean(np.abs(w) < t) - 0.9) < 1e-3
    assert threshold_for_quality(w, 2.0) == pytest.approx(2 * float(np.std(w)), rel=1e-6)
    arrays = [weights((100, 10), seed=1), weights((30, 30), seed=2, scale=0.5)]
    tg = global_threshold_streamed(iter([("a", arrays[0]), ("b", arrays[1])]), 0.8)
    removed = sum(int(np.sum(np.abs(a) < tg)) for a in arrays) / sum(a.size for a in arrays)
    assert 0.8 <= removed < 0.802
    with pytest.raises(InvalidOption):
        threshold_for_sparsity(w, 1.0)


@settings(max_examples=60, deadline=None)
@given(gaps=hnp.arrays(np.int64, st.integers(0, 200), elements=st.integers(0, 5000)),
       cap=st.sampled_from([2, 8, 256, 4096]))  # fmt: skip
def test_gap_symbols_round_trip(gaps, cap):
    syms = gap_symbols(gaps, cap)
    assert syms.max(initial=0) <= cap
    np.testing.assert_array_equal(gaps_from_symbols(syms, cap, gaps.size), gaps)


def test_codec_prunes_shares_and_round_trips():
    w = weights((300, 784))
    codec = DeepCompressionCodec(bits=5, sparsity=0.9)
    payload, stats = codec.encode_with_stats(w)
    out = codec.decode(payload, w.shape)
    assert out.shape == w.shape and out.dtype == np.float32
    assert abs(np.mean(out == 0) - 0.9) < 1e-3
    assert np.all(out[np.abs(w) < threshold_for_sparsity(w, 0.9)] == 0)
    assert np.unique(out[out != 0]).size <= 32
    # each kept weight maps to its nearest shared value
    kept = out != 0
    assert np.max(np.abs(out[kept] - w[kept])) < 0.05 * 0.5
    assert stats["layout"] == "sparse" and stats["distinct"] == 33
    assert stats["huffman_bits"] <= stats["fixed_bits"]
    assert stats["huffman_bits"] >= stats["entropy_bits"] * 0.95  # entropy bounds (index+gaps)
    # ≤ 10 % × 5-bit index + H(0.1) = 0.97 bit/weight of position entropy
    assert len(payload) * 8 < 1.0 * w.size
    q = codec.decode_quantized(payload, w.shape)
    np.testing.assert_array_equal(q.dequantize(), out)
    rebuilt = codec_from_config(codec.get_config())
    np.testing.assert_array_equal(rebuilt.decode(payload, w.shape), out)


def test_unpruned_tensor_uses_dense_layout_and_keeps_shared_values_exactly():
    rng = np.random.default_rng(3)
    values = np.array([-0.3, -0.1, 0.05, 0.2], np.float32)
    w = values[rng.integers(0, 4, (64, 64))]
    codec = DeepCompressionCodec(bits=2)
    payload, stats = codec.encode_with_stats(w)
    assert stats["layout"] == "dense"
    np.testing.assert_array_equal(codec.decode(payload, w.shape), w)  # ≤ 2^bits values: exact
    assert stats["snr_db"] is None or stats["snr_db"] == float("inf")


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(1, 12), min_size=1, max_size=4).map(tuple),
    bits=st.integers(1, 8),
    sparsity=st.one_of(st.none(), st.floats(0, 0.99)),
    seed=st.integers(0, 2**31),
    scale=st.sampled_from([1e-30, 1e-3, 1.0, 1e30]),
)
def test_codec_round_trip_property(shape, bits, sparsity, seed, scale):
    w = (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)
    codec = DeepCompressionCodec(bits=bits, sparsity=sparsity)
    payload = codec.encode(w)
    out = codec.decode(payload, shape)
    q = codec.decode_quantized(payload, shape)
    np.testing.assert_array_equal(q.dequantize(), out)
    nonzero = out[out != 0]
    assert np.unique(nonzero).size <= 2**bits
    # decoding is deterministic: encode(decode(x)) reproduces the same tensor exactly
    np.testing.assert_array_equal(codec.decode(codec.encode(out), shape), out)


def test_constant_and_all_zero_tensors():
    for w in (np.zeros((5, 7), np.float32), np.full((5, 7), 0.25, np.float32)):
        codec = DeepCompressionCodec(bits=3)
        np.testing.assert_array_equal(codec.decode(codec.encode(w), w.shape), w)


def test_refuses_non_finite_and_bad_options():
    w = weights((4, 4))
    w[1, 2] = np.nan
    with pytest.raises(InvalidOption, match="NaN"):
        DeepCompressionCodec(bits=4).encode(w)
    for kwargs in ({"bits": 0}, {"bits": 17}, {"sparsity": 1.5}, {"sparsity": 0.5, "quality": 1}):
        with pytest.raises(InvalidOption):
            DeepCompressionCodec(**kwargs)
    with pytest.raises(InvalidOption):
        DeepCompressionMethod(fc_bits=0)


def test_method_picks_bits_by_layer_kind():
    m = DeepCompressionMethod()
    assert m.codec_for("conv", np.zeros((4, 3, 3, 3), np.float32)).bits == 8
    assert m.codec_for("fc", np.zeros((4, 3), np.float32)).bits == 5
    assert DeepCompressionMethod(bits=6).codec_for("conv", np.zeros((2, 2, 2))).bits == 6


def _good_payload():
    w = weights((40, 50), seed=7)
    codec = DeepCompressionCodec(bits=4, sparsity=0.8)
    return codec, codec.encode(w), w.shape


@pytest.mark.parametrize("cut", [0, 1, 5, 13, 40])
def test_truncated_payload(cut):
    codec, payload, shape = _good_payload()
    with pytest.raises(CorruptPayload):
        codec.decode(payload[:cut] if cut else payload + b"x", shape)


def test_wrong_shape_is_detected():
    codec, payload, shape = _good_payload()
    with pytest.raises(CorruptPayload, match="index says"):
        codec.decode(payload, (shape[0], shape[1] + 1))


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_fuzzed_payloads_raise_corrupt_payload_or_decode(data):
    """Any damage gives CorruptPayload or a tensor of the right shape — never another error."""
    codec, payload, shape = _good_payload()
    buf = bytearray(payload)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] = data.draw(st.integers(0, 255))
    try:
        out = codec.decode(bytes(buf), shape)
    except CorruptPayload:
        return
    assert out.shape == shape


@pytest.mark.parametrize("sparsity", [None, 0.9])
def test_full_8_bit_codebook_keeps_its_largest_value(sparsity):
    """256 shared values + the pruned zero need 9-bit symbols: no uint8 wrap-around."""
    w = weights((256, 64), seed=11)
    codec = DeepCompressionCodec(bits=8, sparsity=sparsity)
    out = codec.decode(codec.encode(w), w.shape)
    kept = np.abs(w) >= (threshold_for_sparsity(w, sparsity) if sparsity else 0)
    assert np.all(out[kept] != 0)
    assert np.max(np.abs(out[kept] - w[kept])) < 0.01
