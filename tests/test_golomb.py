"""Golomb–Rice position coding: formulas, bit-exact round trips, rate, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnnzip.codec import CorruptPayload, InvalidOption
from dnnzip.coding.golomb import (
    MAX_RICE_PARAMETER,
    decode_positions,
    encode_positions,
    expected_bits_per_position,
    optimal_rice_parameter,
    position_bits,
)

FAST = settings(max_examples=150, deadline=None)


# ----------------------------------------------------------------------------- formulas


def test_paper_figures():
    assert optimal_rice_parameter(0.01) == 6
    assert optimal_rice_parameter(0.001) == 9
    assert expected_bits_per_position(0.01) == pytest.approx(8.11, abs=0.005)
    assert expected_bits_per_position(0.001) == pytest.approx(11.50, abs=0.01)


@pytest.mark.parametrize("p", np.geomspace(1e-7, 1.0, 300).tolist())
def test_b_star_is_the_best_power_of_two(p):
    b = optimal_rice_parameter(p)
    best = min(expected_bits_per_position(p, c) for c in range(MAX_RICE_PARAMETER + 1))
    assert expected_bits_per_position(p, b) == pytest.approx(best, rel=1e-12)


def test_dense_positions_clamp_to_unary():
    assert optimal_rice_parameter(0.5) == 0
    assert optimal_rice_parameter(1.0) == 0
    assert expected_bits_per_position(1.0) == 1.0
    assert optimal_rice_parameter(1e-300) == MAX_RICE_PARAMETER


@pytest.mark.parametrize("p", [0.0, -0.1, 1.5, math.nan, math.inf, "x", None])
def test_bad_density(p):
    with pytest.raises(InvalidOption):
        optimal_rice_parameter(p)
    with pytest.raises(InvalidOption):
        expected_bits_per_position(p)


# ----------------------------------------------------------------------------- bit layout


def test_known_bit_layout():
    # gaps from -1: 0, 0, 3; with b = 1: "1 0", "1 0", "01 1" -> 1010011 + one padding bit
    data = encode_positions(np.array([0, 1, 5]), 1)
    assert data == bytes([0b10100110])
    assert position_bits(np.array([0, 1, 5]), 1) == 7
    assert decode_positions(data, 3, 1).tolist() == [0, 1, 5]


def test_empty():
    assert encode_positions(np.array([], dtype=np.int64), 5) == b""
    out = decode_positions(b"", 0, 5)
    assert out.dtype == np.int64 and out.size == 0
    with pytest.raises(CorruptPayload):
        decode_positions(b"\x80", 0, 5)


def test_long_unary_runs_and_wide_remainders():
    # q + 1 + b > 63 takes the chunked path on both sides
    pos = np.array([0, 10_000, 10_001, 2**40, 2**61], dtype=np.int64)
    for b, k in ((0, 3), (3, 3), (30, 4), (40, 5), (MAX_RICE_PARAMETER, 5)):
        sub = pos[:k]  # keep the unary parts below ~2^21 bits
        data = encode_positions(sub, b)
        assert len(data) == (position_bits(sub, b) + 7) // 8
        np.testing.assert_array_equal(decode_positions(data, sub.size, b), sub)


@st.composite
def positions_and_b(draw):
    b = draw(st.integers(0, MAX_RICE_PARAMETER))
    gap_max = min(2 ** min(b + 9, 61), 2**61 // 64)
    gaps = draw(st.lists(st.integers(0, gap_max), min_size=0, max_size=64))
    pos = np.cumsum(np.array(gaps, dtype=np.int64) + 1) - 1
    return pos, b


@FAST
@given(positions_and_b(), st.sampled_from([np.int64, np.int32, np.uint64]))
def test_round_trip(pb, dtype):
    pos, b = pb
    if dtype is np.int32 and pos.size and pos[-1] > np.iinfo(np.int32).max:
        dtype = np.int64
    data = encode_positions(pos.astype(dtype), b)
    bits = position_bits(pos, b)
    q_sum = int(((np.diff(pos, prepend=-1) - 1) >> b).sum()) if pos.size else 0
    assert bits == q_sum + pos.size * (b + 1)
    assert len(data) == (bits + 7) // 8
    out = decode_positions(data, pos.size, b, size=int(pos[-1]) + 1 if pos.size else 0)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, pos)


# ----------------------------------------------------------------------------- rate


@pytest.mark.parametrize("p,n", [(0.01, 2_000_000), (0.001, 10_000_000)])
def test_measured_rate_matches_formula(p, n):
    rng = np.random.default_rng(1234)
    pos = np.flatnonzero(rng.random(n) < p)  # i.i.d. positions: geometric gaps
    b = optimal_rice_parameter(p)
    data = encode_positions(pos, b)
    measured = 8 * len(data) / pos.size
    assert measured == pytest.approx(expected_bits_per_position(p), rel=0.01)
    np.testing.assert_array_equal(decode_positions(data, pos.size, b, size=n), pos)


def test_random_subset_rate():
    # k = p·n positions drawn without replacement, as a top-k selection gives
    rng = np.random.default_rng(7)
    n, p = 1_000_000, 0.01
    pos = np.sort(rng.choice(n, int(p * n), replace=False))
    b = optimal_rice_parameter(p)
    bits = position_bits(pos, b)
    assert bits / pos.size == pytest.approx(expected_bits_per_position(p), rel=0.01)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "pos,msg",
    [
        ([3, 2], "strictly increasing"),
        ([1, 1], "strictly increasing"),
        ([-1, 2], "non-negative"),
        ([0, 2**62], "2\\*\\*62"),
    ],
)
def test_bad_positions(pos, msg):
    with pytest.raises(InvalidOption, match=msg):
        encode_positions(np.array(pos, dtype=np.int64), 3)
    with pytest.raises(InvalidOption, match=msg):
        position_bits(np.array(pos, dtype=np.int64), 3)


@pytest.mark.parametrize(
    "pos",
    [np.array([0.0, 1.0]), np.zeros((2, 2), dtype=np.int64), np.array([2**63], dtype=np.uint64)],
)
def test_bad_position_arrays(pos):
    with pytest.raises(InvalidOption):
        encode_positions(pos, 3)


@pytest.mark.parametrize("b", [-1, MAX_RICE_PARAMETER + 1, 2.0, True, "3"])
def test_bad_b(b):
    with pytest.raises(InvalidOption):
        encode_positions(np.array([1, 2]), b)
    with pytest.raises(InvalidOption):
        decode_positions(b"\xff", 1, b)


def test_bad_count_and_size():
    data = encode_positions(np.array([1, 5, 9]), 2)
    for count in (-1, 1.5, True):
        with pytest.raises(InvalidOption):
            decode_positions(data, count, 2)
    with pytest.raises(InvalidOption):
        decode_positions(data, 3, 2, size=-4)


def test_truncated_and_extended_payloads():
    rng = np.random.default_rng(3)
    pos = np.flatnonzero(rng.random(100_000) < 0.01)
    b = optimal_rice_parameter(0.01)
    data = encode_positions(pos, b)
    for cut in (1, 2, len(data) // 2, len(data) - 1):
        with pytest.raises(CorruptPayload):
            decode_positions(data[:cut], pos.size, b)
    with pytest.raises(CorruptPayload):
        decode_positions(data + b"\x00", pos.size, b)
    with pytest.raises(CorruptPayload):
        decode_positions(data, pos.size + 1, b)  # one position more than coded
    with pytest.raises(CorruptPayload):
        decode_positions(data, pos.size, b, size=int(pos[-1]))  # last position out of range


def test_nonzero_padding_is_rejected():
    data = encode_positions(np.array([0, 1, 5]), 1)  # 7 bits + 1 padding bit
    with pytest.raises(CorruptPayload, match="padding"):
        decode_positions(bytes([data[0] | 1]), 3, 1)


def test_all_zero_payload_does_not_hang():
    # one endless unary run: must be detected at the end of the buffer
    with pytest.raises(CorruptPayload):
        decode_positions(bytes(1 << 20), 1, 0)
    with pytest.raises(CorruptPayload):
        decode_positions(bytes(8), 1_000_000, 0)  # count the payload cannot hold


def test_huge_quotient_is_rejected():
    # 2^62 // 2^3 zeros would be needed; a 1-bit after a run that overflows the limit
    data = bytes(16) + b"\xff"
    with pytest.raises(CorruptPayload):
        decode_positions(data, 1, 3, size=64)


@FAST
@given(st.binary(max_size=64), st.integers(0, 40), st.integers(0, 12), st.integers(0, 5000))
def test_garbage_never_crashes(data, count, b, size):
    try:
        out = decode_positions(data, count, b, size=size)
    except CorruptPayload:
        return
    # whatever decodes must be a valid position list that re-encodes to the same bytes
    assert out.size == count
    assert np.all(np.diff(out) > 0) and (out.size == 0 or (out[0] >= 0 and out[-1] < size))
    assert encode_positions(out, b) == data
