"""The binary arithmetic coder and DeepCABAC binarization: bit-exact round trips, the
adaptive-model ideal, chunking, and corrupted / truncated streams."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dnnzip.codec import CorruptPayload, InvalidOption
from dnnzip.coding import cabac
from dnnzip.quant.dependent import dq_recon


def roundtrip(levels, **kw):
    levels = np.asarray(levels, dtype=np.int32).reshape(-1)
    row_len = kw.pop("row_len", max(1, min(levels.size, 7)))
    p = cabac.StreamParams(n=levels.size, row_len=row_len, **kw)
    data, ideal = cabac.encode_levels(levels, p, measure=True)
    params, r = cabac.decode_levels(data)
    assert params == p
    expect = dq_recon(levels, p.chunk) if p.dq else levels
    np.testing.assert_array_equal(r, expect)
    return data, ideal


@pytest.mark.parametrize("dq", [False, True])
@pytest.mark.parametrize("ctx_mode", [0, 1])
@pytest.mark.parametrize("case", ["zeros", "const", "one", "huge", "laplace", "alternating"])
def test_degenerate_and_typical_inputs_round_trip(case, ctx_mode, dq):
    rng = np.random.default_rng(1)
    levels = {
        "zeros": np.zeros(5000),
        "const": np.full(3000, -9),
        "one": np.array([123456]),
        "huge": rng.choice([-cabac.MAX_LEVEL, cabac.MAX_LEVEL, 0, 1 << 20], 777),
        "laplace": np.rint(rng.laplace(0, 4, 20000)),
        "alternating": np.tile([cabac.MAX_LEVEL, -cabac.MAX_LEVEL], 50),
    }[case]
    roundtrip(levels, ctx_mode=ctx_mode, dq=dq, chunk=1 << 12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(levels=hnp.arrays(np.int32, st.integers(0, 700),
                         elements=st.one_of(st.integers(-3, 3),
                                            st.integers(-cabac.MAX_LEVEL, cabac.MAX_LEVEL))),
       row_len=st.integers(1, 50), chunk=st.integers(1, 300), g=st.integers(0, 20),
       ctx_mode=st.sampled_from([0, 1]), dq=st.booleans(),
       shifts=st.tuples(st.integers(1, 8), st.integers(1, 12)))
def test_hypothesis_round_trip_is_bit_exact(levels, row_len, chunk, g, ctx_mode, dq, shifts):
    roundtrip(levels, row_len=row_len, chunk=chunk, g=g, ctx_mode=ctx_mode, dq=dq,
              shifts=shifts)


def test_size_is_close_to_the_adaptive_model_ideal():
    rng = np.random.default_rng(2)
    levels = np.rint(rng.laplace(0, 3, 200_000)).astype(np.int32)
    data, ideal = roundtrip(levels, row_len=384)
    payload = len(data) - cabac.HEADER.size - 4 - 8 * (-(-levels.size // cabac.DEFAULT_CHUNK))
    assert payload * 8 <= ideal * 1.002 + 64
    assert payload * 8 >= ideal * 0.998


def test_adaptive_contexts_beat_order0_entropy_on_skewed_levels():
    rng = np.random.default_rng(3)
    levels = np.rint(rng.laplace(0, 1.5, 100_000)).astype(np.int32)
    _, counts = np.unique(levels, return_counts=True)
    p = counts / counts.sum()
    h0 = float(-(counts * np.log2(p)).sum())
    data, _ = roundtrip(levels, row_len=1000)
    assert len(data) * 8 < h0 * 1.01


def test_chunking_costs_little_and_changes_nothing_decoded():
    rng = np.random.default_rng(4)
    levels = np.rint(rng.laplace(0, 5, 1 << 19)).astype(np.int32)
    one, _ = roundtrip(levels, row_len=512, chunk=1 << 19)
    many, _ = roundtrip(levels, row_len=512, chunk=1 << 17)
    assert len(many) < len(one) * 1.005


def test_levels_out_of_range_are_refused():
    p = cabac.StreamParams(n=1, row_len=1)
    with pytest.raises(InvalidOption):
        cabac.encode_levels(np.array([cabac.MAX_LEVEL + 1]), p)
    with pytest.raises(InvalidOption):
        cabac.StreamParams(n=1, row_len=1, g=99).validate()


def _stream():
    rng = np.random.default_rng(5)
    levels = np.rint(rng.laplace(0, 4, 20000)).astype(np.int32)
    p = cabac.StreamParams(n=levels.size, row_len=100, chunk=5000)
    return cabac.encode_levels(levels, p)[0]


def test_truncated_streams_raise():
    data = _stream()
    for cut in (0, 3, cabac.HEADER.size - 1, cabac.HEADER.size + 5, len(data) // 2,
                len(data) - 1):
        with pytest.raises(CorruptPayload):
            cabac.decode_levels(data[:cut])
    with pytest.raises(CorruptPayload):
        cabac.decode_levels(data + b"\0")


def test_header_fields_are_checked():
    data = bytearray(_stream())
    bad_magic = b"XXXX" + bytes(data[4:])
    with pytest.raises(CorruptPayload):
        cabac.decode_levels(bad_magic)
    # every header byte is covered by the header CRC (step size included)
    for offset, value in ((4, 9), (5, 4), (6, 7), (7, 200), (8, 0), (9, 40), (10, 1), (15, 3)):
        corrupt = bytearray(data)
        corrupt[offset] = value
        with pytest.raises(CorruptPayload):
            cabac.decode_levels(bytes(corrupt))


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_fuzz_corrupted_payload_never_decodes_silently(data):
    stream = bytearray(_STREAM)
    n_flips = data.draw(st.integers(1, 4))
    for _ in range(n_flips):
        i = data.draw(st.integers(cabac.HEADER.size, len(stream) - 1))
        stream[i] ^= data.draw(st.integers(1, 255))
    try:
        _, r = cabac.decode_levels(bytes(stream))
    except CorruptPayload:
        return
    # a flip that decodes must give back the very same levels (e.g. a flip in dropped slack)
    np.testing.assert_array_equal(r, _LEVELS)


_LEVELS = np.rint(np.random.default_rng(6).laplace(0, 3, 3000)).astype(np.int32)
_STREAM = cabac.encode_levels(_LEVELS, cabac.StreamParams(n=_LEVELS.size, row_len=60,
                                                          chunk=1000))[0]


def test_bin_cost_table_matches_log2():
    p = np.array([1, 100, 16384, 32000, 32767])
    c1 = cabac.COST1[p >> 5]
    np.testing.assert_allclose(c1, -np.log2(((p >> 5) + 0.5) * 32 / 32768), rtol=1e-5)


@pytest.mark.parametrize("shifts", [(7, 11), (1, 1), (4, 5), (12, 12), (1, 12)])
def test_warm_table_is_the_saturating_warm_up_rule(shifts):
    sf, ss = shifts
    wt = cabac.warm_table(sf, ss)
    c = np.arange(cabac.COUNT_CAP + 1)
    w = np.floor(np.log2(c + 2.0)).astype(np.int64)
    np.testing.assert_array_equal(wt[0::2], np.minimum(sf, w))
    np.testing.assert_array_equal(wt[1::2], np.minimum(ss, w))
    # the saturated count already has the final shifts: later counts would change nothing
    assert tuple(wt[-2:]) == (sf, ss)


@pytest.mark.parametrize("n", [147456, 589824, 196608, 11720448, 32769, 100000])
def test_balanced_chunks_split_evenly_over_two_cores(n):
    chunk = cabac.balanced_chunk(n, cabac.DEFAULT_CHUNK)
    nch = -(-n // chunk)
    assert chunk <= cabac.DEFAULT_CHUNK
    assert nch % 2 == 0
    assert n - (nch - 1) * chunk >= chunk // 2  # the last chunk is not a stub
    assert cabac.balanced_chunk(1000, cabac.DEFAULT_CHUNK) == cabac.DEFAULT_CHUNK
